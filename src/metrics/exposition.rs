//! The exposition: a `prometheus-client` [`Collector`] that sums every shard's slots when it is
//! asked to encode (that is, at scrape time) and writes them, with the process-wide values read
//! by the scrape, through the crate's Prometheus text encoder (format 0.0.4).
//!
//! The crate owns the format (HELP/TYPE lines, `_total` suffixes, label escaping, cumulative
//! `le` buckets with Go-style float formatting); this file only decides names, help texts,
//! labels and which series are shown. Counter names below are written with their `_total`
//! suffix (so the name in the code is the one in docs/metrics.md) and stripped before they are
//! handed to the encoder, which appends it again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use crate::state::journal::JournalStats;

use super::{
    CALLBACK_FAILURES, CdrBacklog, GRPC_CODES, GRPC_METHODS, HistogramSnapshot, LATENCY_BUCKETS,
    LinkSnapshot, Metrics, ROUTES, STATUSES, Snapshot, reason_label,
};

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Process-wide values read by the scrape (not per shard): dependencies' health and backlogs
/// that live outside the metric slots.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// `None`: no Redis configured for the L2 limiter.
    pub redis_up: Option<bool>,
    pub redis_round_trips: u64,
    pub redis_transitions: u64,
    /// `None`: the state backend does not report a queue.
    pub state_queue_len: Option<u64>,
    pub state_batches: u64,
    pub state_batched_ops: u64,
    /// `None`: the embedded backend does not run the journal engine (or the store is gone).
    pub state_journal: Option<JournalStats>,
    /// CDRs the writer accepted / refused (backpressure) since start.
    pub cdr_accepted: u64,
    pub cdr_refused: u64,
    pub cdr_batches_written: u64,
    pub cdr_upload_failures: u64,
    pub cdr_journal_failures: u64,
    pub cdr_journal_recovered: u64,
    /// `None`: no CDR probe registered.
    pub cdr_backlog: Option<CdrBacklog>,
    /// Routing view of each link: `(link id, connected, transitions since start)`.
    pub link_health: Vec<(u32, bool, u64)>,
    /// The contact-policy engine's counter store (Redis): `None` when the engine does not use
    /// Redis (disabled, memory counters, or a remote MCP).
    pub policy_store: Option<PolicyStoreHealth>,
    /// The remote MCP client: `None` without `[policy] remote_url`.
    pub policy_remote: Option<PolicyRemoteHealth>,
}

/// Health of the policy engine's Redis counter store.
#[derive(Debug, Default, Clone, Copy)]
pub struct PolicyStoreHealth {
    pub up: bool,
    pub errors: u64,
}

/// Counters of the remote MCP client (process-wide).
#[derive(Debug, Default, Clone, Copy)]
pub struct PolicyRemoteHealth {
    /// Shards that consider the service down now.
    pub shards_down: u64,
    pub errors: u64,
    pub fail_open_passes: u64,
    pub fail_closed_refusals: u64,
}

/// Renders the page: one registry per scrape holding one collector (cheap: a `Vec` and a
/// `Box`; the work is the summing and formatting either way).
pub fn render(metrics: &Arc<Metrics>, gauges: &Gauges) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SlotCollector {
        metrics: Arc::clone(metrics),
        gauges: gauges.clone(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a `String` cannot fail, and our encode only fails when the writer does.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!("metrics exposition failed: {e}");
    }
    out
}

/// Sums the per-shard slots when the registry encodes it (at scrape time).
#[derive(Debug)]
pub struct SlotCollector {
    pub metrics: Arc<Metrics>,
    pub gauges: Gauges,
}

impl Collector for SlotCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.metrics.snapshot();
        let mut out = Out(encoder);
        encode_all(&mut out, &snapshot, &self.metrics, &self.gauges)
    }
}

/// Thin helpers over the encoder: one family per call.
struct Out<'a>(DescriptorEncoder<'a>);

type NoExemplar<'a> = Option<&'a Exemplar<NoLabelSet, u64>>;
type NoHistExemplars<'a> = Option<&'a HashMap<usize, Exemplar<NoLabelSet, f64>>>;

/// The name handed to the encoder for a counter: without `_total` (the encoder appends it).
fn counter_base(name: &str) -> &str {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    name.strip_suffix("_total").unwrap_or(name)
}

impl Out<'_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let mut m =
            self.0
                .encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
        m.encode_counter(&v, NoExemplar::None)
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        m.encode_gauge(&v)
    }

    /// A labelled counter family; `series` yields `(labels, value)`.
    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut m =
            self.0
                .encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
        for (labels, v) in series {
            m.encode_family(&labels)?
                .encode_counter(&v, NoExemplar::None)?;
        }
        Ok(())
    }

    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in series {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) -> fmt::Result {
        // Non-cumulative counts per upper bound; the encoder accumulates. The last slot is
        // the overflow (+Inf) bucket.
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, h.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        buckets.push((
            f64::INFINITY,
            h.buckets.get(LATENCY_BUCKETS.len()).copied().unwrap_or(0),
        ));
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        m.encode_histogram(h.sum_seconds, h.count, &buckets, NoHistExemplars::None)
    }
}

/// Every family, in page order. Labelled series that are zero and come from a large fixed
/// set (HTTP route × status, gRPC method × code, rejection reasons) are omitted to keep the
/// page short; everything else is always present.
fn encode_all(o: &mut Out<'_>, s: &Snapshot, m: &Metrics, g: &Gauges) -> fmt::Result {
    // ---- Ingress ----
    o.counters(
        "smsgw_http_requests_total",
        "REST requests answered, by route and HTTP status (status 0 = any other status).",
        s.http.iter().enumerate().flat_map(|(r, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(move |(st, &v)| {
                    (
                        [
                            ("route", ROUTES[r].to_string()),
                            ("status", STATUSES[st].to_string()),
                        ],
                        v,
                    )
                })
        }),
    )?;
    o.counters(
        "smsgw_grpc_requests_total",
        "gRPC calls answered, by method and status code.",
        s.grpc.iter().enumerate().flat_map(|(mi, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(move |(ci, &v)| ([("method", GRPC_METHODS[mi]), ("code", GRPC_CODES[ci])], v))
        }),
    )?;
    o.counter(
        "smsgw_messages_accepted_total",
        "Messages recorded as accepted in the state store (duplicates of a known transaction_id not counted).",
        s.accepted,
    )?;
    o.counters(
        "smsgw_messages_rejected_total",
        "Send requests answered with an error, by API error code.",
        s.rejected
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(i, &v)| ([("reason", reason_label(i))], v)),
    )?;
    o.counter(
        "smsgw_messages_submitted_total",
        "Messages whose every part the SMSC accepted (submit_sm_resp OK).",
        s.submitted,
    )?;
    o.counter(
        "smsgw_messages_failed_total",
        "Accepted messages that ended failed/rejected/unknown at submission.",
        s.failed,
    )?;
    o.counter(
        "smsgw_parts_submitted_total",
        "Parts (submit_sm) of accepted messages passed to SMPP submission.",
        s.parts_submitted,
    )?;
    o.counter(
        "smsgw_handover_total",
        "Messages handed to another shard that owns a bind of their link.",
        s.handed_over,
    )?;
    o.counter(
        "smsgw_handover_full_total",
        "Hand-overs refused because the target shard's bounded queue was full.",
        s.handover_full,
    )?;
    o.counter(
        "smsgw_submit_retried_other_bind_total",
        "Messages retried on a second bind after the first could not take them.",
        s.retried_other_bind,
    )?;
    o.counter(
        "smsgw_submit_retried_other_member_total",
        "Messages none of whose parts were written, retried once on another member of the pool.",
        s.retried_other_member,
    )?;

    // ---- Stage latencies ----
    o.histogram(
        "smsgw_send_duration_seconds",
        "Successful sends: parsed request to response built (ingress to response).",
        &s.send_duration,
    )?;
    o.histogram(
        "smsgw_smpp_submit_resp_seconds",
        "Per message: submit of its parts to the last submit_sm_resp.",
        &s.submit_resp,
    )?;
    o.histogram(
        "smsgw_ingress_to_submit_resp_seconds",
        "Per message: request taken by the pipeline to the last submit_sm_resp (ingress to SMSC answer).",
        &s.ingress_to_submit_resp,
    )?;
    o.histogram(
        "smsgw_receipt_delay_seconds",
        "Acceptance of a message to the arrival of a delivery receipt that changed it.",
        &s.receipt_delay,
    )?;

    // ---- Receipts ----
    o.counters(
        "smsgw_receipts_total",
        "Delivery receipts received, by outcome (applied, duplicate, unmatched, unparsable).",
        [
            ("applied", s.receipts_applied),
            ("duplicate", s.receipts_duplicate),
            ("unmatched", s.receipts_unmatched),
            ("unparsable", s.receipts_unparsable),
        ]
        .map(|(outcome, v)| ([("outcome", outcome)], v)),
    )?;
    o.counter(
        "smsgw_receipts_not_acked_store_down_total",
        "Receipts left unacknowledged (SMSC will resend) because the state store was unavailable.",
        s.receipts_not_acked_store_down,
    )?;

    // ---- SMPP links ----
    type LinkField = fn(&LinkSnapshot) -> u64;
    let link_gauges: [(&str, &str, LinkField); 6] = [
        (
            "smsgw_link_up",
            "1 when at least one submit-capable bind of the link is bound.",
            |l| u64::from(l.binds_up > 0),
        ),
        (
            "smsgw_link_binds",
            "Configured submit-capable binds of the link (all shards).",
            |l| l.binds,
        ),
        (
            "smsgw_link_binds_up",
            "Submit-capable binds of the link that are bound now.",
            |l| l.binds_up,
        ),
        (
            "smsgw_link_window_outstanding",
            "submit_sm written and not yet answered on the link (window occupancy).",
            |l| l.outstanding,
        ),
        (
            "smsgw_link_window_capacity",
            "Sum of the window sizes of the link's bound binds.",
            |l| l.window,
        ),
        (
            "smsgw_link_queued",
            "submit_sm queued behind the window on the link.",
            |l| l.queued,
        ),
    ];
    for (name, help, f) in link_gauges {
        o.gauges(
            name,
            help,
            s.links.iter().map(|l| ([("link", l.id.to_string())], f(l))),
        )?;
    }
    o.gauges(
        "smsgw_link_connected",
        "1 while routing considers the link connected (the health table the router reads).",
        g.link_health
            .iter()
            .map(|&(id, up, _)| ([("link", id.to_string())], u64::from(up))),
    )?;
    o.counters(
        "smsgw_link_transitions_total",
        "Connected/disconnected changes of the link in the routing health table.",
        g.link_health
            .iter()
            .map(|&(id, _, t)| ([("link", id.to_string())], t)),
    )?;
    let link_counters: [(&str, &str, LinkField); 5] = [
        (
            "smsgw_smpp_throttled_total",
            "submit_sm_resp with ESME_RTHROTTLED received on the link.",
            |l| l.throttled,
        ),
        (
            "smsgw_smpp_submit_timeouts_total",
            "submit_sm that got no response within resp_timeout on the link.",
            |l| l.submit_timeouts,
        ),
        (
            "smsgw_smpp_unmatched_responses_total",
            "Responses that matched no request sent on the link.",
            |l| l.unmatched_responses,
        ),
        (
            "smsgw_smpp_reconnects_total",
            "TCP connection attempts to the link beyond the first of each bind.",
            |l| l.reconnects,
        ),
        (
            "smsgw_smpp_delivers_total",
            "deliver_sm received on the link (receipts and MO).",
            |l| l.delivers,
        ),
    ];
    for (name, help, f) in link_counters {
        o.counters(
            name,
            help,
            s.links.iter().map(|l| ([("link", l.id.to_string())], f(l))),
        )?;
    }

    // ---- Dependencies: Redis (L2 limiter), contact policy ----
    if let Some(up) = g.redis_up {
        o.gauge(
            "smsgw_redis_up",
            "1 when the Redis (L2) rate limiter answers; absent when no Redis is configured.",
            u64::from(up),
        )?;
        o.counter(
            "smsgw_redis_round_trips_total",
            "Redis calls made by the L2 limiter (lease scripts and probes).",
            g.redis_round_trips,
        )?;
        o.counter(
            "smsgw_redis_transitions_total",
            "Redis up/down transitions (each down is a fallback per [limits] on_redis_down).",
            g.redis_transitions,
        )?;
    }
    if let Some(p) = g.policy_store {
        o.gauge(
            "smsgw_policy_store_up",
            "1 when the contact-policy counter store (Redis) answered its last call.",
            u64::from(p.up),
        )?;
        o.counter(
            "smsgw_policy_store_errors_total",
            "Contact-policy checks whose counter store (Redis) call failed.",
            p.errors,
        )?;
    }
    if let Some(r) = g.policy_remote {
        o.gauge(
            "smsgw_policy_remote_up",
            "1 while no shard considers the remote contact-policy service down.",
            u64::from(r.shards_down == 0),
        )?;
        o.counter(
            "smsgw_policy_remote_errors_total",
            "Checks against the remote contact-policy service that failed (connect, timeout, bad answer).",
            r.errors,
        )?;
        o.counter(
            "smsgw_policy_remote_fail_open_total",
            "Messages passed unchecked because the remote policy service failed (fail_open).",
            r.fail_open_passes,
        )?;
        o.counter(
            "smsgw_policy_remote_fail_closed_total",
            "Messages refused because the remote policy service failed (fail_closed).",
            r.fail_closed_refusals,
        )?;
    }

    // ---- State store ----
    if let Some(q) = g.state_queue_len {
        o.gauge(
            "smsgw_state_queue_len",
            "State store operations waiting for the writer (backlog).",
            q,
        )?;
        o.counter(
            "smsgw_state_batches_total",
            "Write batches committed by the state store.",
            g.state_batches,
        )?;
        o.counter(
            "smsgw_state_batched_ops_total",
            "Operations committed in state store batches.",
            g.state_batched_ops,
        )?;
    }
    if let Some(j) = g.state_journal {
        o.gauge(
            "smsgw_state_hot_records",
            "Message records held in memory by the journal engine (bounded by [state] hot_max_records).",
            j.hot_records as u64,
        )?;
        o.gauge(
            "smsgw_state_log_bytes",
            "Journal log bytes written since the last checkpoint (what a crash restart replays).",
            j.log_bytes,
        )?;
        o.counter(
            "smsgw_state_log_syncs_total",
            "fdatasyncs of the journal logs (fsync = batch: one per group commit; off: only at a clean stop).",
            j.log_syncs,
        )?;
        o.counter(
            "smsgw_state_log_sync_waiters_total",
            "Operations that waited for a journal log fdatasync and were completed by it (per fdatasync: divide by smsgw_state_log_syncs_total).",
            j.log_sync_waiters,
        )?;
        o.counter(
            "smsgw_state_checkpoints_total",
            "Journal checkpoints completed (logs folded into the cold store, then deleted).",
            j.checkpoints,
        )?;
        o.counter(
            "smsgw_state_checkpointed_records_total",
            "Record images written to the cold store by journal checkpoints.",
            j.checkpointed_records,
        )?;
        o.counter(
            "smsgw_state_ingested_checkpoints_total",
            "Journal checkpoints written to the cold store as new sorted tables (large ones) instead of a write batch.",
            j.ingested_checkpoints,
        )?;
        o.counter(
            "smsgw_state_checkpoint_failures_total",
            "Journal checkpoints that failed (retried; the logs are kept and grow until one succeeds).",
            j.checkpoint_failures,
        )?;
        o.counter(
            "smsgw_state_evicted_total",
            "Checkpointed, unchanged records dropped from memory by the journal engine.",
            j.evicted,
        )?;
        o.counter(
            "smsgw_state_cold_loads_total",
            "Records read back from the cold store into memory (late receipts, queries, repeats).",
            j.loaded,
        )?;
        o.counter(
            "smsgw_state_key_filter_skips_total",
            "New transaction ids whose cold store read the journal's key filter spared.",
            j.key_filter_skips,
        )?;
        o.gauge(
            "smsgw_state_key_filter_ready",
            "1 once the journal's key filter holds every unexpired cold key (start-up scan done); 0 while every new id reads the cold store.",
            u64::from(j.key_filter_ready),
        )?;
        o.gauge(
            "smsgw_state_replayed_records",
            "Records replayed from the journal logs at the last start (after a crash).",
            j.replayed,
        )?;
    }
    o.counter(
        "smsgw_state_write_failed_after_submit_total",
        "Submitted messages whose outcome could not be written (their receipts will not correlate).",
        s.state_write_failed_after_submit,
    )?;
    o.counter(
        "smsgw_recovery_resubmitted_total",
        "Messages of an earlier process resubmitted by crash recovery at start.",
        m.recovered_resubmitted.get(),
    )?;
    o.counter(
        "smsgw_recovery_unknown_total",
        "Messages of an earlier process that crash recovery marked unknown (possibly sent).",
        m.recovered_unknown.get(),
    )?;

    // ---- CDR ----
    o.counter(
        "smsgw_cdr_records_total",
        "CDRs handed to the CDR writer (one per finished message).",
        g.cdr_accepted,
    )?;
    o.counter(
        "smsgw_cdr_refused_total",
        "CDRs refused by the writer under backpressure (not exported).",
        g.cdr_refused,
    )?;
    o.counter(
        "smsgw_cdr_batches_written_total",
        "CDR batches placed in the sink (local file written or S3 upload answered 2xx).",
        g.cdr_batches_written,
    )?;
    o.counter(
        "smsgw_cdr_upload_failures_total",
        "Failed CDR batch uploads to S3 (retried with back-off).",
        g.cdr_upload_failures,
    )?;
    o.counter(
        "smsgw_cdr_journal_failures_total",
        "CDR batches whose crash journal could not be created or written.",
        g.cdr_journal_failures,
    )?;
    o.counter(
        "smsgw_cdr_journal_recovered_records_total",
        "CDRs placed at start from the batch journals of a crashed earlier run.",
        g.cdr_journal_recovered,
    )?;
    if let Some(b) = g.cdr_backlog {
        o.gauge(
            "smsgw_cdr_queue_len",
            "CDRs queued for the CDR writer thread and not yet taken by it.",
            b.queued_records,
        )?;
        o.gauge(
            "smsgw_cdr_pending_batches",
            "Closed CDR batches not yet in the sink (in memory or spooled).",
            b.pending_batches,
        )?;
        o.gauge(
            "smsgw_cdr_spool_files",
            "CDR batch files in the S3 write-ahead spool directory.",
            b.spool_files,
        )?;
        o.gauge(
            "smsgw_cdr_spool_bytes",
            "Bytes of the CDR batch files in the S3 spool directory.",
            b.spool_bytes,
        )?;
    }

    // ---- Delivery-status callbacks ----
    let cb = &m.callbacks;
    o.counter(
        "smsgw_callback_events_enqueued_total",
        "Delivery-status events put into the callback outbox.",
        cb.events_enqueued.get(),
    )?;
    o.counter(
        "smsgw_callback_events_dropped_total",
        "Delivery-status events refused because the callback outbox was full.",
        cb.events_dropped.get(),
    )?;
    o.counter(
        "smsgw_callback_posts_ok_total",
        "Callback POSTs answered 2xx.",
        cb.posts_ok.get(),
    )?;
    let failed = cb.posts_failed();
    o.counters(
        "smsgw_callback_posts_failed_total",
        "Callback POSTs that failed, by reason (connect, timeout, http_4xx, http_5xx, other).",
        CALLBACK_FAILURES
            .iter()
            .zip(failed)
            .map(|(r, v)| ([("reason", *r)], v)),
    )?;
    o.counter(
        "smsgw_callback_events_gave_up_total",
        "Callback events abandoned after their last retry.",
        cb.events_gave_up.get(),
    )?;
    o.gauge(
        "smsgw_callback_outbox_backlog",
        "Callback events in the outbox not yet delivered.",
        cb.outbox_backlog.get(),
    )?;

    // ---- Runtime ----
    o.gauges(
        "smsgw_shard_driver",
        "1 for the I/O driver each shard runs (io_uring or epoll).",
        s.drivers.iter().filter_map(|(shard, d)| {
            d.map(|d| ([("shard", shard.to_string()), ("driver", d.to_string())], 1))
        }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn families(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect()
    }

    #[test]
    fn renders_families_once_with_cumulative_buckets() {
        let m = Arc::new(Metrics::new(2, vec![3]));
        m.shard(0).send_duration.observe(Duration::from_micros(50));
        m.shard(1).send_duration.observe(Duration::from_millis(2));
        m.shard(1).rejected("blacklist");
        m.shard(0).set_driver(crate::runtime::Driver::Epoll);
        m.shard(1).grpc_request("SendMessage", "RESOURCE_EXHAUSTED");
        m.callbacks.post_failed("http_5xx");
        let text = render(&m, &Gauges::default());
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("smsgw_send_duration_seconds_count 2\n"));
        assert!(text.contains("smsgw_messages_rejected_total{reason=\"blacklist\"} 1\n"));
        assert!(text.contains("smsgw_shard_driver{shard=\"0\",driver=\"epoll\"} 1\n"));
        assert!(text.contains("smsgw_link_up{link=\"3\"} 0\n"));
        assert!(text.contains(
            "smsgw_grpc_requests_total{method=\"SendMessage\",code=\"RESOURCE_EXHAUSTED\"} 1\n"
        ));
        assert!(text.contains("smsgw_callback_posts_failed_total{reason=\"http_5xx\"} 1\n"));
        assert!(text.contains("# TYPE smsgw_messages_accepted_total counter\n"));
        assert!(!text.contains("smsgw_redis_up"));
        assert!(
            !text.contains("smsgw_cdr_queue_len"),
            "no probe: no backlog gauges"
        );
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
        let mut names = families(&text);
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a family is declared twice");
    }

    #[test]
    fn optional_families_appear_with_their_source() {
        let m = Arc::new(Metrics::new(1, vec![]));
        let g = Gauges {
            redis_up: Some(false),
            state_queue_len: Some(4),
            cdr_backlog: Some(CdrBacklog {
                queued_records: 7,
                ..CdrBacklog::default()
            }),
            link_health: vec![(5, true, 2)],
            policy_store: Some(PolicyStoreHealth {
                up: true,
                errors: 1,
            }),
            policy_remote: Some(PolicyRemoteHealth::default()),
            ..Gauges::default()
        };
        let text = render(&m, &g);
        for line in [
            "smsgw_redis_up 0\n",
            "smsgw_state_queue_len 4\n",
            "smsgw_cdr_queue_len 7\n",
            "smsgw_link_connected{link=\"5\"} 1\n",
            "smsgw_link_transitions_total{link=\"5\"} 2\n",
            "smsgw_policy_store_up 1\n",
            "smsgw_policy_store_errors_total 1\n",
            "smsgw_policy_remote_errors_total 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn journal_families_appear_only_with_the_journal_engine() {
        let m = Arc::new(Metrics::new(1, vec![]));
        let journal = [
            "smsgw_state_hot_records",
            "smsgw_state_log_bytes",
            "smsgw_state_log_syncs_total",
            "smsgw_state_log_sync_waiters_total",
            "smsgw_state_checkpoints_total",
            "smsgw_state_checkpointed_records_total",
            "smsgw_state_checkpoint_failures_total",
            "smsgw_state_evicted_total",
            "smsgw_state_cold_loads_total",
            "smsgw_state_key_filter_skips_total",
            "smsgw_state_key_filter_ready",
            "smsgw_state_replayed_records",
        ];
        // The writer engine: its queue families, none of the journal's.
        let writer = render(
            &m,
            &Gauges {
                state_queue_len: Some(0),
                ..Gauges::default()
            },
        );
        for name in journal {
            assert!(!writer.contains(name), "{name} without the journal engine");
        }
        let text = render(
            &m,
            &Gauges {
                state_journal: Some(JournalStats {
                    hot_records: 12,
                    checkpoints: 3,
                    checkpointed_records: 40,
                    checkpoint_failures: 1,
                    ingested_checkpoints: 2,
                    evicted: 9,
                    loaded: 2,
                    replayed: 5,
                    log_bytes: 4096,
                    log_syncs: 7,
                    log_sync_waiters: 300,
                    key_filter_ready: true,
                    key_filter_skips: 11,
                }),
                ..Gauges::default()
            },
        );
        for line in [
            "# TYPE smsgw_state_hot_records gauge\n",
            "smsgw_state_hot_records 12\n",
            "# TYPE smsgw_state_log_bytes gauge\n",
            "smsgw_state_log_bytes 4096\n",
            "# TYPE smsgw_state_log_syncs_total counter\n",
            "smsgw_state_log_syncs_total 7\n",
            "smsgw_state_log_sync_waiters_total 300\n",
            "# TYPE smsgw_state_checkpoints_total counter\n",
            "smsgw_state_checkpoints_total 3\n",
            "smsgw_state_checkpointed_records_total 40\n",
            "smsgw_state_ingested_checkpoints_total 2\n",
            "# TYPE smsgw_state_checkpoint_failures_total counter\n",
            "smsgw_state_checkpoint_failures_total 1\n",
            "smsgw_state_evicted_total 9\n",
            "smsgw_state_cold_loads_total 2\n",
            "# TYPE smsgw_state_key_filter_skips_total counter\n",
            "smsgw_state_key_filter_skips_total 11\n",
            "# TYPE smsgw_state_key_filter_ready gauge\n",
            "smsgw_state_key_filter_ready 1\n",
            "# TYPE smsgw_state_replayed_records gauge\n",
            "smsgw_state_replayed_records 5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        for name in journal {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        assert!(
            !text.contains("smsgw_state_queue_len"),
            "writer families without the writer"
        );
    }

    #[test]
    fn label_values_are_escaped_by_the_encoder() {
        // Our label values come from fixed sets and numbers and never need escaping; this
        // checks that the encoder we rely on escapes `\`, `"` and newline if one ever does.
        #[derive(Debug)]
        struct Odd;
        impl Collector for Odd {
            fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
                let mut m = e.encode_descriptor("odd", "h", None, MetricType::Gauge)?;
                m.encode_family(&[("v", "a\"b\\c\nd")])?.encode_gauge(&1u64)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Odd));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("odd{v=\"a\\\"b\\\\c\\nd\"} 1\n"), "{out}");
    }
}
