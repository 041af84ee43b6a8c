//! Prometheus text exposition format 0.0.4 of a `Snapshot` plus process-wide gauges.

use std::fmt::Write;

use super::{HistogramSnapshot, LATENCY_BUCKETS, ROUTES, STATUSES, Snapshot, reason_label};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Process-wide values read at scrape time (not per shard).
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// `None`: no Redis configured.
    pub redis_up: Option<bool>,
    pub redis_round_trips: u64,
    pub redis_transitions: u64,
    /// `None`: the state backend does not report a queue.
    pub state_queue_len: Option<u64>,
    pub state_batches: u64,
    pub state_batched_ops: u64,
    pub submitted: u64,
    pub failed: u64,
    pub handed_over: u64,
    pub handover_full: u64,
    pub retried_other_bind: u64,
    pub state_write_failed_after_submit: u64,
    pub receipts_not_acked_store_down: u64,
    /// CDRs the writer accepted / refused (backpressure) since start.
    pub cdr_accepted: u64,
    pub cdr_refused: u64,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_into(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            self.sample(&bucket, &[("le", &bound.to_string())], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

/// Label values may hold any UTF-8; `\`, `"` and newline must be escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Renders every metric family. Series that are zero and have labels (e.g. a status never
/// answered) are omitted to keep the page short; unlabeled ones are always present.
pub fn render(s: &Snapshot, g: &Gauges) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));

    o.family(
        "smsgw_http_requests_total",
        "counter",
        "REST requests answered, by route and HTTP status (status 0 = any other status).",
    );
    for (r, row) in s.http.iter().enumerate() {
        for (st, &v) in row.iter().enumerate() {
            if v > 0 {
                let status = STATUSES[st].to_string();
                o.sample(
                    "smsgw_http_requests_total",
                    &[("route", ROUTES[r]), ("status", &status)],
                    v,
                );
            }
        }
    }
    o.one(
        "smsgw_messages_accepted_total",
        "counter",
        "Messages recorded as accepted in the state store (duplicates of a known transaction_id not counted).",
        s.accepted,
    );
    o.family(
        "smsgw_messages_rejected_total",
        "counter",
        "Send requests answered with an error, by API error code.",
    );
    for (i, &v) in s.rejected.iter().enumerate() {
        if v > 0 {
            o.sample(
                "smsgw_messages_rejected_total",
                &[("reason", reason_label(i))],
                v,
            );
        }
    }
    o.one(
        "smsgw_messages_submitted_total",
        "counter",
        "Messages whose every part the SMSC accepted (submit_sm_resp OK).",
        g.submitted,
    );
    o.one(
        "smsgw_messages_failed_total",
        "counter",
        "Accepted messages that ended failed/rejected/unknown at submission.",
        g.failed,
    );
    o.one(
        "smsgw_parts_submitted_total",
        "counter",
        "Parts (submit_sm) of accepted messages passed to SMPP submission.",
        s.parts_submitted,
    );
    o.one(
        "smsgw_handover_total",
        "counter",
        "Messages handed to another shard that owns a bind of their link.",
        g.handed_over,
    );
    o.one(
        "smsgw_handover_full_total",
        "counter",
        "Hand-overs refused because the target shard's bounded queue was full.",
        g.handover_full,
    );
    o.one(
        "smsgw_submit_retried_other_bind_total",
        "counter",
        "Messages retried on a second bind after the first could not take them.",
        g.retried_other_bind,
    );
    o.histogram(
        "smsgw_send_duration_seconds",
        "Successful sends: parsed request to response built.",
        &s.send_duration,
    );
    o.histogram(
        "smsgw_smpp_submit_resp_seconds",
        "Per message: submit of its parts to the last submit_sm_resp.",
        &s.submit_resp,
    );
    o.histogram(
        "smsgw_receipt_delay_seconds",
        "Acceptance of a message to the arrival of a delivery receipt that changed it.",
        &s.receipt_delay,
    );
    o.family(
        "smsgw_receipts_total",
        "counter",
        "Delivery receipts received, by outcome (applied, duplicate, unmatched, unparsable).",
    );
    for (outcome, v) in [
        ("applied", s.receipts_applied),
        ("duplicate", s.receipts_duplicate),
        ("unmatched", s.receipts_unmatched),
        ("unparsable", s.receipts_unparsable),
    ] {
        o.sample("smsgw_receipts_total", &[("outcome", outcome)], v);
    }
    o.one(
        "smsgw_receipts_not_acked_store_down_total",
        "counter",
        "Receipts left unacknowledged (SMSC will resend) because the state store was unavailable.",
        g.receipts_not_acked_store_down,
    );

    type LinkField = fn(&super::LinkSnapshot) -> u64;
    let link_families: [(&str, &str, &str, LinkField); 10] = [
        (
            "smsgw_link_up",
            "gauge",
            "1 when at least one submit-capable bind of the link is bound.",
            |l| u64::from(l.binds_up > 0),
        ),
        (
            "smsgw_link_binds",
            "gauge",
            "Configured submit-capable binds of the link (all shards).",
            |l| l.binds,
        ),
        (
            "smsgw_link_binds_up",
            "gauge",
            "Submit-capable binds of the link that are bound now.",
            |l| l.binds_up,
        ),
        (
            "smsgw_link_window_outstanding",
            "gauge",
            "submit_sm written and not yet answered on the link (window occupancy).",
            |l| l.outstanding,
        ),
        (
            "smsgw_link_window_capacity",
            "gauge",
            "Sum of the window sizes of the link's bound binds.",
            |l| l.window,
        ),
        (
            "smsgw_link_queued",
            "gauge",
            "submit_sm queued behind the window on the link.",
            |l| l.queued,
        ),
        (
            "smsgw_smpp_throttled_total",
            "counter",
            "submit_sm_resp with ESME_RTHROTTLED received on the link.",
            |l| l.throttled,
        ),
        (
            "smsgw_smpp_submit_timeouts_total",
            "counter",
            "submit_sm that got no response within resp_timeout on the link.",
            |l| l.submit_timeouts,
        ),
        (
            "smsgw_smpp_unmatched_responses_total",
            "counter",
            "Responses that matched no request sent on the link.",
            |l| l.unmatched_responses,
        ),
        (
            "smsgw_smpp_reconnects_total",
            "counter",
            "TCP connection attempts to the link beyond the first of each bind.",
            |l| l.reconnects,
        ),
    ];
    for (name, kind, help, f) in link_families {
        o.family(name, kind, help);
        for l in &s.links {
            o.sample(name, &[("link", &l.id.to_string())], f(l));
        }
    }
    o.family(
        "smsgw_smpp_delivers_total",
        "counter",
        "deliver_sm received on the link (receipts and MO).",
    );
    for l in &s.links {
        o.sample(
            "smsgw_smpp_delivers_total",
            &[("link", &l.id.to_string())],
            l.delivers,
        );
    }

    if let Some(up) = g.redis_up {
        o.one(
            "smsgw_redis_up",
            "gauge",
            "1 when the Redis (L2) rate limiter answers; absent when no Redis is configured.",
            u64::from(up),
        );
        o.one(
            "smsgw_redis_round_trips_total",
            "counter",
            "Redis calls made by the L2 limiter (lease scripts and probes).",
            g.redis_round_trips,
        );
        o.one(
            "smsgw_redis_transitions_total",
            "counter",
            "Redis up/down transitions (each down is a fallback per [limits] on_redis_down).",
            g.redis_transitions,
        );
    }
    if let Some(q) = g.state_queue_len {
        o.one(
            "smsgw_state_queue_len",
            "gauge",
            "State store operations waiting for the writer (backlog).",
            q,
        );
        o.one(
            "smsgw_state_batches_total",
            "counter",
            "Write batches committed by the state store.",
            g.state_batches,
        );
        o.one(
            "smsgw_state_batched_ops_total",
            "counter",
            "Operations committed in state store batches.",
            g.state_batched_ops,
        );
    }
    o.one(
        "smsgw_state_write_failed_after_submit_total",
        "counter",
        "Submitted messages whose outcome could not be written (their receipts will not correlate).",
        g.state_write_failed_after_submit,
    );
    o.one(
        "smsgw_cdr_records_total",
        "counter",
        "CDRs handed to the CDR writer (one per finished message).",
        g.cdr_accepted,
    );
    o.one(
        "smsgw_cdr_refused_total",
        "counter",
        "CDRs refused by the writer under backpressure (not exported).",
        g.cdr_refused,
    );
    o.family(
        "smsgw_shard_driver",
        "gauge",
        "1 for the I/O driver each shard runs (io_uring or epoll).",
    );
    for (shard, driver) in &s.drivers {
        if let Some(d) = driver {
            o.sample(
                "smsgw_shard_driver",
                &[("shard", &shard.to_string()), ("driver", d)],
                1,
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Duration;

    #[test]
    fn renders_families_once_with_cumulative_buckets() {
        let m = Metrics::new(2, vec![3]);
        m.shard(0).send_duration.observe(Duration::from_micros(50));
        m.shard(1).send_duration.observe(Duration::from_millis(2));
        m.shard(1).rejected("blacklist");
        m.shard(0).set_driver(crate::runtime::Driver::Epoll);
        let text = render(&m.snapshot(), &Gauges::default());
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("smsgw_send_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("smsgw_send_duration_seconds_count 2\n"));
        assert!(text.contains("smsgw_messages_rejected_total{reason=\"blacklist\"} 1\n"));
        assert!(text.contains("smsgw_shard_driver{shard=\"0\",driver=\"epoll\"} 1\n"));
        assert!(text.contains("smsgw_link_up{link=\"3\"} 0\n"));
        assert!(!text.contains("smsgw_redis_up"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a family is declared twice");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }
}
