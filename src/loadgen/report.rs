//! Counters and latency histograms of a run, merged across threads, and their renderings:
//! the final table, JSON, and the HdrHistogram percentile-distribution text used by the
//! usual HDR plotting tools.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds; one hour is the largest value kept (anything
/// longer saturates, and runs are capped well below that).
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
const LATENCY_SIGFIG: u8 = 3;
/// Distinct (status, code) rejection keys tracked before folding into "other".
const MAX_REJECTION_KEYS: usize = 64;
/// Distinct transport-error descriptions kept.
const MAX_ERROR_KINDS: usize = 16;

/// Per-thread results; merged once at the end.
#[derive(Debug, Clone)]
pub struct Stats {
    pub latency_ns: Histogram<u64>,
    pub sent: u64,
    pub accepted: u64,
    /// (HTTP status, error code from the body or empty) -> count.
    pub rejected: Vec<(u16, Vec<u8>, u64)>,
    /// Requests lost with their connection (reset, EOF, unparseable response).
    pub transport_errors: u64,
    /// Requests still unanswered when the drain deadline passed.
    pub timeouts: u64,
    /// Scheduled requests that could not be sent because no connection was up.
    pub unsent: u64,
    /// Failed connection attempts.
    pub connect_errors: u64,
    pub error_kinds: Vec<(String, u64)>,
    /// Time of the last response, as offset from the run start.
    pub last_response: Duration,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            // The bounds are constants known to be valid.
            latency_ns: Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_SIGFIG)
                .expect("valid histogram bounds"),
            sent: 0,
            accepted: 0,
            rejected: Vec::new(),
            transport_errors: 0,
            timeouts: 0,
            unsent: 0,
            connect_errors: 0,
            error_kinds: Vec::new(),
            last_response: Duration::ZERO,
        }
    }

    pub fn record_latency(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.saturating_record(ns.max(1));
    }

    /// Count a rejection without allocating when the key was seen before.
    pub fn record_rejection(&mut self, status: u16, code: &[u8]) {
        self.record_rejections(status, code, 1);
    }

    /// Count `n` rejections with one key (a refused batch counts each of its messages).
    pub fn record_rejections(&mut self, status: u16, code: &[u8], n: u64) {
        if let Some(entry) = self
            .rejected
            .iter_mut()
            .find(|(s, c, _)| *s == status && c.as_slice() == code)
        {
            entry.2 += n;
        } else if self.rejected.len() < MAX_REJECTION_KEYS {
            self.rejected.push((status, code.to_vec(), n));
        } else {
            self.record_rejection_other(status, n);
        }
    }

    fn record_rejection_other(&mut self, status: u16, n: u64) {
        let other = b"(other)";
        match self
            .rejected
            .iter_mut()
            .find(|(s, c, _)| *s == status && c == other)
        {
            Some(entry) => entry.2 += n,
            None => self.rejected.push((status, other.to_vec(), n)),
        }
    }

    pub fn record_error_kind(&mut self, kind: &str) {
        if let Some(entry) = self.error_kinds.iter_mut().find(|(k, _)| k == kind) {
            entry.1 += 1;
        } else if self.error_kinds.len() < MAX_ERROR_KINDS {
            self.error_kinds.push((kind.to_owned(), 1));
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have identical bounds, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (status, code, n) in &other.rejected {
            match self
                .rejected
                .iter_mut()
                .find(|(s, c, _)| s == status && c == code)
            {
                Some(entry) => entry.2 += n,
                None => self.rejected.push((*status, code.clone(), *n)),
            }
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.unsent += other.unsent;
        self.connect_errors += other.connect_errors;
        for (kind, n) in &other.error_kinds {
            if let Some(entry) = self.error_kinds.iter_mut().find(|(k, _)| k == kind) {
                entry.1 += n;
            } else if self.error_kinds.len() < MAX_ERROR_KINDS {
                self.error_kinds.push((kind.clone(), *n));
            }
        }
        self.last_response = self.last_response.max(other.last_response);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: String,
    pub count: u64,
}

/// Latency summary in microseconds, measured from each request's scheduled send time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Everything a run produced, as printed and as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// `rate` (open loop) or `max` (closed loop).
    pub mode: &'static str,
    pub rate_per_s: Option<u64>,
    pub connections: usize,
    pub pipeline: usize,
    /// Messages per batch request (0 = single sends); counts and rates are per message.
    pub batch: usize,
    pub threads: usize,
    /// I/O driver of the load generator's runtimes: `io_uring` or `epoll`.
    pub driver: String,
    /// Wall time from the start to the last response.
    pub elapsed_s: f64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected_total: u64,
    pub rejected: Vec<Rejection>,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub unsent: u64,
    pub connect_errors: u64,
    pub errors_total: u64,
    /// errors_total / (sent + unsent); 1.0 when nothing could be sent for connect errors.
    pub error_rate: f64,
    pub accepted_per_s: f64,
    pub sent_per_s: f64,
    pub latency: LatencySummary,
    pub error_kinds: Vec<(String, u64)>,
    /// How late the generator wrote requests relative to their due time (µs); this delay is
    /// part of the latency figures, so a large value means the client, not the server, lagged.
    pub send_lag_p50_us: f64,
    pub send_lag_p99_us: f64,
    pub send_lag_max_us: f64,
    #[serde(skip)]
    pub histogram_ns: Histogram<u64>,
}

/// Run parameters the report repeats.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub target: String,
    pub rate_per_s: Option<u64>,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: usize,
    pub threads: usize,
    pub driver: String,
    pub elapsed: Duration,
}

fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

impl Report {
    pub fn new(info: RunInfo, stats: Stats) -> Self {
        let h = &stats.latency_ns;
        let q = |quantile: f64| {
            if h.is_empty() {
                0.0
            } else {
                ns_to_us(h.value_at_quantile(quantile))
            }
        };
        let latency = LatencySummary {
            count: h.len(),
            min_us: if h.is_empty() { 0.0 } else { ns_to_us(h.min()) },
            mean_us: if h.is_empty() {
                0.0
            } else {
                h.mean() / 1_000.0
            },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0.0 } else { ns_to_us(h.max()) },
        };
        let mut rejected: Vec<Rejection> = stats
            .rejected
            .iter()
            .map(|(status, code, count)| Rejection {
                status: *status,
                code: String::from_utf8_lossy(code).into_owned(),
                count: *count,
            })
            .collect();
        rejected.sort_by(|a, b| b.count.cmp(&a.count).then(a.status.cmp(&b.status)));
        let rejected_total: u64 = rejected.iter().map(|r| r.count).sum();
        let errors_total = rejected_total + stats.transport_errors + stats.timeouts + stats.unsent;
        let attempted = stats.sent + stats.unsent;
        let error_rate = if attempted > 0 {
            errors_total as f64 / attempted as f64
        } else if stats.connect_errors > 0 {
            1.0
        } else {
            0.0
        };
        // Rates over the time traffic actually flowed; never divide by a zero interval.
        let secs = info.elapsed.as_secs_f64().max(1e-9);
        Report {
            target: info.target,
            mode: if info.rate_per_s.is_some() {
                "rate"
            } else {
                "max"
            },
            rate_per_s: info.rate_per_s,
            connections: info.connections,
            pipeline: info.pipeline,
            batch: info.batch,
            threads: info.threads,
            driver: info.driver,
            elapsed_s: info.elapsed.as_secs_f64(),
            sent: stats.sent,
            accepted: stats.accepted,
            rejected_total,
            rejected,
            transport_errors: stats.transport_errors,
            timeouts: stats.timeouts,
            unsent: stats.unsent,
            connect_errors: stats.connect_errors,
            errors_total,
            error_rate,
            accepted_per_s: stats.accepted as f64 / secs,
            sent_per_s: stats.sent as f64 / secs,
            latency,
            error_kinds: stats.error_kinds,
            send_lag_p50_us: 0.0,
            send_lag_p99_us: 0.0,
            send_lag_max_us: 0.0,
            histogram_ns: stats.latency_ns,
        }
    }

    /// Record the client-side send lag distribution (nanoseconds).
    pub fn set_send_lag(&mut self, lag_ns: &Histogram<u64>) {
        if !lag_ns.is_empty() {
            self.send_lag_p50_us = ns_to_us(lag_ns.value_at_quantile(0.5));
            self.send_lag_p99_us = ns_to_us(lag_ns.value_at_quantile(0.99));
            self.send_lag_max_us = ns_to_us(lag_ns.max());
        }
    }

    /// 0 when the error rate is within `max_error_rate`, 1 otherwise.
    pub fn exit_code(&self, max_error_rate: f64) -> i32 {
        if self.error_rate > max_error_rate {
            1
        } else {
            0
        }
    }

    /// The human-readable final table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rate = match self.rate_per_s {
            Some(r) => format!("{r}/s (open loop)"),
            None => "max (closed loop)".to_owned(),
        };
        let _ = writeln!(s, "target        {}", self.target);
        let _ = writeln!(
            s,
            "load          {rate}, {} connections, pipeline {}, {} threads, driver {}",
            self.connections, self.pipeline, self.threads, self.driver
        );
        if self.batch > 0 {
            let _ = writeln!(
                s,
                "batch         {} messages per request (counts and rates are per message; \
                 latency is per request)",
                self.batch
            );
        }
        let _ = writeln!(s, "elapsed       {:.3} s", self.elapsed_s);
        let _ = writeln!(
            s,
            "sent          {:>12}  ({:.0}/s)",
            self.sent, self.sent_per_s
        );
        let _ = writeln!(
            s,
            "accepted      {:>12}  ({:.0} msg/s)",
            self.accepted, self.accepted_per_s
        );
        let _ = writeln!(s, "rejected      {:>12}", self.rejected_total);
        for r in &self.rejected {
            let code = if r.code.is_empty() { "-" } else { &r.code };
            let _ = writeln!(s, "  {} {:<24} {:>10}", r.status, code, r.count);
        }
        let _ = writeln!(s, "transport err {:>12}", self.transport_errors);
        let _ = writeln!(s, "timeouts      {:>12}", self.timeouts);
        let _ = writeln!(s, "unsent        {:>12}", self.unsent);
        let _ = writeln!(s, "connect err   {:>12}", self.connect_errors);
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(s, "  {kind}: {n}");
        }
        let _ = writeln!(s, "error rate    {:>11.3}%", self.error_rate * 100.0);
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency ({}; {} samples)\n  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            if self.mode == "rate" {
                "from scheduled send"
            } else {
                "closed loop, from actual send"
            },
            l.count,
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            fmt_us(l.mean_us),
        );
        if self.mode == "rate" {
            let _ = writeln!(
                s,
                "send lag (client-side, included above)  p50 {}  p99 {}  max {}",
                fmt_us(self.send_lag_p50_us),
                fmt_us(self.send_lag_p99_us),
                fmt_us(self.send_lag_max_us),
            );
        }
        s
    }
}

/// µs below 10 ms, ms above: short and readable in one column.
pub fn fmt_us(us: f64) -> String {
    if us < 10_000.0 {
        format!("{us:.0}µs")
    } else {
        format!("{:.1}ms", us / 1_000.0)
    }
}

/// HdrHistogram "percentile distribution" text (the format of Java's
/// `outputPercentileDistribution`), values in milliseconds, as read by the HDR plotters.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    const NS_PER_MS: f64 = 1_000_000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / NS_PER_MS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / NS_PER_MS,
            h.stdev() / NS_PER_MS,
            h.max() as f64 / NS_PER_MS,
        )
    };
    let _ = writeln!(
        s,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        s,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            target: "127.0.0.1:1".to_owned(),
            rate_per_s: Some(100),
            connections: 2,
            pipeline: 1,
            batch: 0,
            threads: 1,
            driver: "epoll".to_owned(),
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn merge_and_rates() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.sent = 100;
        a.accepted = 97;
        a.record_rejection(429, b"rate_limited");
        a.record_rejection(429, b"rate_limited");
        b.sent = 100;
        b.accepted = 99;
        b.record_rejection(429, b"rate_limited");
        b.record_rejection(500, b"");
        for ms in 1..=100 {
            a.record_latency(Duration::from_millis(ms));
        }
        a.merge(&b);
        let r = Report::new(info(), a);
        assert_eq!(r.rejected_total, 4);
        assert_eq!(
            r.rejected[0],
            Rejection {
                status: 429,
                code: "rate_limited".into(),
                count: 3
            }
        );
        assert_eq!(r.errors_total, 4);
        assert!((r.error_rate - 0.02).abs() < 1e-9);
        assert!((r.accepted_per_s - 98.0).abs() < 1e-9);
        assert_eq!(r.exit_code(0.01), 1);
        assert_eq!(r.exit_code(0.05), 0);
        assert!((r.latency.p50_us - 50_000.0).abs() < 100.0);
        assert!((r.latency.max_us - 100_000.0).abs() < 100.0);
        let table = r.table();
        assert!(table.contains("rate_limited"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["accepted"], 196);
        assert_eq!(json["rejected"][0]["code"], "rate_limited");
    }

    #[test]
    fn nothing_sent_because_of_connect_errors_is_full_failure() {
        let mut s = Stats::new();
        s.connect_errors = 3;
        let r = Report::new(info(), s);
        assert_eq!(r.error_rate, 1.0);
        assert_eq!(r.exit_code(0.5), 1);
    }

    #[test]
    fn rejection_keys_are_bounded() {
        let mut s = Stats::new();
        for i in 0..1000u32 {
            s.record_rejection(400, i.to_string().as_bytes());
        }
        assert!(s.rejected.len() <= MAX_REJECTION_KEYS + 1);
        assert_eq!(s.rejected.iter().map(|r| r.2).sum::<u64>(), 1000);
    }

    #[test]
    fn percentile_text_has_hdr_shape() {
        let mut s = Stats::new();
        for us in 1..=1000 {
            s.record_latency(Duration::from_micros(us));
        }
        let text = percentile_distribution(&s.latency_ns);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().contains("Percentile"));
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(' ')).collect();
        assert!(rows.len() > 10);
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(text.contains("#[Max     =        1.000"), "{text}");
        assert!(text.contains("Total count    =         1000"));
    }
}
