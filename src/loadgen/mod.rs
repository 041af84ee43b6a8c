//! `smsgw bench` (the load generator) and `smsgw null-http` (the baseline server).
//!
//! The generator is open loop: every request has a due time fixed before the run starts
//! (`--rate`), and its latency is measured from that due time, so a server that stalls cannot
//! hide the queue it causes (no coordinated omission). `--rate max` is the closed-loop
//! variant for finding the saturation throughput: each connection keeps `--pipeline` requests
//! outstanding, and latency is measured from the actual send. Every run is bounded by
//! `--duration` and `--requests`, plus a bounded drain for in-flight answers.
//!
//! Layers: [`schedule`] (pure slot arithmetic), [`payload`] (request bytes), [`http`]
//! (response framing), [`client`] (monoio connections), [`report`] (tables, JSON, HDR text),
//! [`null_server`] (the baseline).

pub mod client;
// gRPC load modes (tonic client on tokio), same schedule and report.
pub mod grpc;
pub mod http;
pub mod null_server;
pub mod pacer;
pub mod payload;
pub mod report;
pub mod schedule;
pub mod spawn;

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

pub use null_server::{NullServer, NullServerConfig};
pub use payload::TextMix;
pub use report::Report;
pub use schedule::Pace;

use client::{LiveCounters, RunPlan, ThreadResult};
use payload::{RequestTemplate, TemplateSpec};

/// Longest run accepted: every load loop in this project is bounded.
pub const MAX_RUN: Duration = Duration::from_secs(3600);
/// Run length when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Run length cap for `--rate max --requests N` without `--duration`.
pub const DEFAULT_MAX_MODE_CAP: Duration = Duration::from_secs(300);
const MAX_CONNECTIONS: usize = 100_000;
const MAX_PIPELINE: usize = 1024;
const MAX_THREADS: usize = 256;
const MAX_RATE_PER_S: u64 = 100_000_000;
const MAX_DRAIN: Duration = Duration::from_secs(120);
/// Largest `--batch`: the gateway's bound on messages per batch submit.
const MAX_BATCH: usize = 1000;
const SEND_PATH: &str = "/api/v1/sms/send";
const BATCH_PATH: &str = "/api/v1/sms/send-batch";

/// Errors of the load generator and the null server.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{what}: {why}")]
    InvalidArgument { what: &'static str, why: String },
    #[error("cannot build the monoio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("cannot run the simulator: {0}")]
    Spawn(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

fn invalid(what: &'static str, why: impl Into<String>) -> LoadgenError {
    LoadgenError::InvalidArgument {
        what,
        why: why.into(),
    }
}

/// Load protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// REST `POST /api/v1/sms/send`, one message per request.
    Rest,
    /// gRPC unary SendMessage (`--url` is the gRPC listener, e.g. http://127.0.0.1:44044).
    Grpc,
    /// gRPC bidirectional SendMessageStream, one stream per connection.
    GrpcStream,
}

/// How the open-loop writers wait for due times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimerMode {
    Precise,
    Wheel,
}

/// `smsgw bench`: open-loop load against the REST send API (or the null server).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the gateway (plain http; the host must resolve to an address).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Request path of the send API.
    #[arg(long, default_value = "/api/v1/sms/send")]
    pub path: String,
    #[arg(long, value_enum, default_value = "rest")]
    pub protocol: Protocol,
    /// Target requests per second in total (open loop), or `max` for closed-loop saturation.
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// Keep-alive connections, spread over the threads.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests outstanding per connection (HTTP/1.1 pipelining when > 1).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Messages per request through the batch submit (`POST /api/v1/sms/send-batch` unless
    /// `--path` says otherwise), 1..=1000; 0 (default) sends one message per request. In batch
    /// mode `--rate` and `--requests` count messages, and every figure is per message.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Load-generator threads, one monoio runtime each.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator threads to cores (thread i on core i mod cores).
    #[arg(long)]
    pub pin: bool,
    /// Sending time, e.g. `10s`, `500ms`, `2m` (default 10s, or what `--requests` needs).
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop after this many requests (with `--duration`, whichever comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// How long to wait for outstanding answers after the sending time.
    #[arg(long, default_value = "5s")]
    pub drain_timeout: String,
    #[arg(long, default_value = "2s")]
    pub connect_timeout: String,
    /// How writers wait for due times: `precise` (a helper thread per generator thread, about
    /// 50 µs accuracy) or `wheel` (monoio's 1 ms timer: requests go out up to ~2 ms late, shown
    /// as send lag and included in latency).
    #[arg(long, value_enum, default_value = "precise")]
    pub timer: TimerMode,
    /// Extra request header `Name: value` (repeatable), e.g. `Authorization: Bearer x`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// `esme` field: the link or pool id to send through.
    #[arg(long, default_value_t = 1)]
    pub esme: u64,
    /// `source` field.
    #[arg(long, default_value = "SMSGW")]
    pub source: String,
    /// Number of distinct destinations, rotating from `--destination-base`.
    #[arg(long, default_value_t = 1000)]
    pub destinations: u64,
    #[arg(long, default_value_t = 79_000_000_000)]
    pub destination_base: u64,
    /// Text kinds and weights: gsm7, ucs2, multipart (GSM7, 3 parts), multipart-ucs2.
    #[arg(long, default_value = "gsm7=70,ucs2=20,multipart=10")]
    pub text_mix: String,
    /// Write the final report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HdrHistogram percentile distribution (ms) here.
    #[arg(long)]
    pub hdr_out: Option<PathBuf>,
    /// Exit with code 1 when (rejected + errors) / requests exceeds this fraction.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Start `smsgw smsc-sim` for the run (killed at the end) and wait until the target
    /// accepts a message before measuring.
    #[arg(long)]
    pub spawn_sim: bool,
    /// Where the spawned simulator listens (the gateway's links must point there).
    #[arg(long, default_value = "127.0.0.1:2775")]
    pub sim_listen: SocketAddr,
    /// Extra argument for the spawned simulator (repeatable), e.g. `--sim-arg=--dlr-percent=0`.
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    pub sim_args: Vec<String>,
    /// Binary to run `smsc-sim` from (default: this executable).
    #[arg(long)]
    pub sim_bin: Option<PathBuf>,
}

/// `smsgw null-http`: the baseline server.
#[derive(Debug, Clone, clap::Args)]
pub struct NullServerArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// HTTP status of every answer (for testing clients' error handling).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
}

/// A validated bench run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub host: String,
    pub path: String,
    pub pace: Pace,
    pub connections: usize,
    pub pipeline: usize,
    /// Messages per batch request; 0 = single sends.
    pub batch: usize,
    pub threads: usize,
    pub pin: bool,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub timer: TimerMode,
    pub headers: Vec<(String, String)>,
    pub esme: u64,
    pub source: String,
    pub destinations: u64,
    pub destination_base: u64,
    pub text_mix: TextMix,
    pub progress: bool,
}

/// Parse `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0 && secs <= MAX_RUN.as_secs_f64() * 2.0)
        .then(|| Duration::from_secs_f64(secs))
}

/// Split `http://host:port[/prefix]` into a resolved address, the Host header and a path prefix.
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), LoadgenError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            invalid(
                "--url",
                "https is not supported; point the bench at the plain HTTP port",
            )
        } else {
            invalid("--url", format!("`{url}` must start with http://"))
        }
    })?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid("--url", format!("`{url}` has no host")));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let target = with_port
        .to_socket_addrs()
        .map_err(|e| invalid("--url", format!("cannot resolve `{authority}`: {e}")))?
        .next()
        .ok_or_else(|| invalid("--url", format!("`{authority}` resolves to no address")))?;
    Ok((target, authority.to_owned(), prefix.to_owned()))
}

impl BenchConfig {
    /// Validate command-line arguments into a run.
    pub fn from_args(args: &BenchArgs) -> Result<Self, LoadgenError> {
        if args.protocol != Protocol::Rest && args.batch > 0 {
            return Err(invalid(
                "--batch",
                "batch requests are REST only; use --protocol grpc-stream for bulk gRPC",
            ));
        }
        let (target, host, prefix) = parse_url(&args.url)?;
        if !args.path.starts_with('/') || args.path.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(invalid(
                "--path",
                "must start with `/` and contain no spaces",
            ));
        }
        if args.batch > MAX_BATCH {
            return Err(invalid("--batch", format!("must be 0..={MAX_BATCH}")));
        }
        // Batch mode: rates and counts are in messages; the schedule runs in requests.
        let per_request = args.batch.max(1) as u64;
        let pace = if args.rate.trim().eq_ignore_ascii_case("max") {
            Pace::Max
        } else {
            let rate: u64 = args.rate.trim().parse().map_err(|_| {
                invalid(
                    "--rate",
                    format!("`{}` is not a number or `max`", args.rate),
                )
            })?;
            if rate == 0 || rate > MAX_RATE_PER_S {
                return Err(invalid(
                    "--rate",
                    format!("must be 1..={MAX_RATE_PER_S} or `max`"),
                ));
            }
            Pace::Rate {
                rate_per_s: rate.div_ceil(per_request),
            }
        };
        if args.connections == 0 || args.connections > MAX_CONNECTIONS {
            return Err(invalid(
                "--connections",
                format!("must be 1..={MAX_CONNECTIONS}"),
            ));
        }
        if args.pipeline == 0 || args.pipeline > MAX_PIPELINE {
            return Err(invalid("--pipeline", format!("must be 1..={MAX_PIPELINE}")));
        }
        if args.threads == 0 || args.threads > MAX_THREADS {
            return Err(invalid("--threads", format!("must be 1..={MAX_THREADS}")));
        }
        if args.requests == Some(0) {
            return Err(invalid("--requests", "must be at least 1"));
        }
        let requests = args.requests.map(|n| n.div_ceil(per_request));
        let duration = match (&args.duration, requests, pace) {
            (Some(text), _, _) => {
                parse_duration(text)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid("--duration", format!("`{text}` is not a duration like 10s"))
                    })?
            }
            (None, Some(n), Pace::Rate { rate_per_s }) => {
                // Just long enough for slot n-1 to fall due.
                let ns = u128::from(n) * 1_000_000_000 / u128::from(rate_per_s) + 1;
                Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).min(MAX_RUN)
            }
            (None, Some(_), Pace::Max) => DEFAULT_MAX_MODE_CAP,
            (None, None, _) => DEFAULT_DURATION,
        };
        if duration > MAX_RUN {
            return Err(invalid(
                "--duration",
                format!("at most {} s", MAX_RUN.as_secs()),
            ));
        }
        let drain_timeout = parse_duration(&args.drain_timeout)
            .filter(|d| *d <= MAX_DRAIN)
            .ok_or_else(|| {
                invalid(
                    "--drain-timeout",
                    format!("a duration up to {} s", MAX_DRAIN.as_secs()),
                )
            })?;
        let connect_timeout = parse_duration(&args.connect_timeout)
            .filter(|d| !d.is_zero() && *d <= MAX_DRAIN)
            .ok_or_else(|| invalid("--connect-timeout", "a non-zero duration up to 120 s"))?;
        let headers = args
            .headers
            .iter()
            .map(|h| payload::parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        if args.destinations == 0 {
            return Err(invalid("--destinations", "must be at least 1"));
        }
        if args.source.is_empty() || args.source.len() > 32 {
            return Err(invalid("--source", "must be 1..=32 bytes"));
        }
        if !(0.0..=1.0).contains(&args.max_error_rate) {
            return Err(invalid("--max-error-rate", "must be a fraction in 0..=1"));
        }
        Ok(Self {
            target,
            protocol: args.protocol,
            host,
            path: if args.batch > 0 && args.path == SEND_PATH {
                format!("{prefix}{BATCH_PATH}")
            } else {
                format!("{prefix}{}", args.path)
            },
            pace,
            connections: args.connections,
            pipeline: args.pipeline,
            batch: args.batch,
            threads: args.threads.min(args.connections),
            pin: args.pin,
            duration,
            requests,
            drain_timeout,
            connect_timeout,
            timer: args.timer,
            headers,
            esme: args.esme,
            source: args.source.clone(),
            destinations: args.destinations,
            destination_base: args.destination_base,
            text_mix: TextMix::parse(&args.text_mix)?,
            progress: !args.quiet,
        })
    }
}

/// Run a bench to completion and return its report. Blocks the calling thread, which prints
/// the progress line (when enabled) while the generator threads work.
pub fn run_bench(config: &BenchConfig) -> Result<Report, LoadgenError> {
    if config.protocol != Protocol::Rest {
        return grpc::run_bench(config);
    }
    let run_id = format!(
        "b{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let template = RequestTemplate::new(TemplateSpec {
        host: &config.host,
        path: &config.path,
        headers: &config.headers,
        esme: config.esme,
        source: &config.source,
        destination_base: config.destination_base,
        destinations: config.destinations,
        mix: config.text_mix.clone(),
        run_id: &run_id,
        batch: config.batch,
    });
    // Connections are opened before the first slot is due; this lead time is not measured.
    let lead = Duration::from_millis(200) + Duration::from_micros(50) * config.connections as u32;
    let lead = lead.min(Duration::from_secs(5));
    let start = Instant::now() + lead;
    let plan = Arc::new(RunPlan {
        target: config.target,
        pace: config.pace,
        total_slots: schedule::total_slots(config.pace, config.duration, config.requests),
        connections: config.connections as u64,
        pipeline: config.pipeline,
        send_window: config.duration,
        drain: config.drain_timeout,
        connect_timeout: config.connect_timeout,
        precise_timer: config.timer == TimerMode::Precise,
        template,
        start,
    });

    let cores = if config.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<ThreadResult, LoadgenError>>();
    let mut live = Vec::with_capacity(config.threads);
    let mut handles = Vec::with_capacity(config.threads);
    for i in 0..config.threads {
        let counters = Arc::new(LiveCounters::default());
        live.push(counters.clone());
        let plan = plan.clone();
        let tx = done_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let threads = config.threads;
        let handle = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let _ = tx.send(client::run_thread(plan, i, threads, counters));
            })
            .map_err(LoadgenError::Io)?;
        handles.push(handle);
    }
    drop(done_tx);

    // Every thread ends by its own deadlines; this outer bound only guards against a bug.
    let hard_stop = start
        + config.duration
        + config.drain_timeout
        + config.connect_timeout
        + Duration::from_secs(10);
    let mut results = Vec::with_capacity(config.threads);
    let mut next_tick = start + Duration::from_secs(1);
    let mut last_sent = 0u64;
    while results.len() < config.threads {
        let now = Instant::now();
        if now >= hard_stop {
            return Err(LoadgenError::Internal(
                "generator threads overran the run bound",
            ));
        }
        match done_rx.recv_timeout(next_tick.saturating_duration_since(now)) {
            Ok(result) => results.push(result?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if config.progress {
                    last_sent = print_progress(&live, start, last_sent);
                }
                next_tick += Duration::from_secs(1);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LoadgenError::Internal("a generator thread died"));
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }

    let mut stats = report::Stats::new();
    let mut send_lag = report::Stats::new().latency_ns;
    let mut drivers: Vec<&str> = Vec::new();
    for r in &results {
        stats.merge(&r.stats);
        let _ = send_lag.add(&r.send_lag_ns);
        if !drivers.contains(&r.driver) {
            drivers.push(r.driver);
        }
    }
    let elapsed = if stats.last_response.is_zero() {
        config.duration
    } else {
        stats.last_response
    };
    let mut report = Report::new(
        report::RunInfo {
            target: format!("http://{}{}", config.host, config.path),
            // In messages per second (a batch request carries several).
            rate_per_s: match config.pace {
                Pace::Rate { rate_per_s } => Some(rate_per_s * config.batch.max(1) as u64),
                Pace::Max => None,
            },
            connections: config.connections,
            pipeline: config.pipeline,
            batch: config.batch,
            threads: config.threads,
            driver: drivers.join("+"),
            elapsed,
        },
        stats,
    );
    report.set_send_lag(&send_lag);
    Ok(report)
}

fn print_progress(live: &[Arc<LiveCounters>], start: Instant, last_sent: u64) -> u64 {
    let (mut sent, mut answered, mut errors) = (0, 0, 0);
    for c in live {
        sent += c.sent.load(Ordering::Relaxed);
        answered += c.answered.load(Ordering::Relaxed);
        errors += c.errors.load(Ordering::Relaxed);
    }
    let elapsed = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    let ok = answered.saturating_sub(errors.min(answered));
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "[{elapsed:6.1}s] sent {sent:>10}  ok {ok:>10}  errors {errors:>8}  in flight {:>6}  rate {:>8}/s",
        sent.saturating_sub(answered),
        sent.saturating_sub(last_sent)
    );
    sent
}

/// `smsgw bench`: run, print the table, write the optional files; the exit code is 1 when
/// the error rate is above `--max-error-rate`.
pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let config = BenchConfig::from_args(&args)?;
    let _sim = if args.spawn_sim {
        let bin = match &args.sim_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating this executable")?,
        };
        let sim = spawn::SimGuard::start(&bin, args.sim_listen, &args.sim_args)?;
        eprintln!(
            "smsc-sim started on {} (pid {})",
            args.sim_listen,
            sim.pid()
        );
        wait_until_accepting(&config)?;
        Some(sim)
    } else {
        None
    };
    let report = run_bench(&config)?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.hdr_out {
        std::fs::write(path, report::percentile_distribution(&report.histogram_ns))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let code = report.exit_code(args.max_error_rate);
    if code != 0 {
        eprintln!(
            "error rate {:.3}% is above --max-error-rate {:.3}%",
            report.error_rate * 100.0,
            args.max_error_rate * 100.0
        );
    }
    Ok(code)
}

/// Bounded wait until the target accepts a message (e.g. the gateway rebinding to a freshly
/// started simulator): single requests, up to `READY_ATTEMPTS` half a second apart.
fn wait_until_accepting(config: &BenchConfig) -> anyhow::Result<()> {
    const READY_ATTEMPTS: u32 = 60;
    let mut probe = config.clone();
    probe.pace = Pace::Rate { rate_per_s: 10 };
    probe.requests = Some(1);
    // A batch probe carries one message, so one accepted message means ready.
    probe.batch = probe.batch.min(1);
    probe.connections = 1;
    probe.threads = 1;
    probe.duration = Duration::from_millis(100);
    probe.drain_timeout = Duration::from_secs(2);
    probe.progress = false;
    let mut last = String::new();
    for _ in 0..READY_ATTEMPTS {
        let report = run_bench(&probe)?;
        if report.accepted == 1 {
            return Ok(());
        }
        last = match report.rejected.first() {
            Some(r) => format!("HTTP {} {}", r.status, r.code),
            None => format!("{:?}", report.error_kinds),
        };
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::bail!("the target did not accept a probe message within 30 s (last answer: {last})")
}

/// `smsgw null-http`: serve until the process is stopped.
pub fn run_null_server(args: NullServerArgs) -> anyhow::Result<()> {
    let server = NullServer::start(NullServerConfig {
        addr: args.addr,
        threads: args.threads,
        status: args.status,
        stall_once: None,
    })?;
    eprintln!(
        "null-http listening on {} with {} threads (answers {} to every request)",
        server.local_addr(),
        args.threads,
        args.status
    );
    server.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn config(argv: &[&str]) -> Result<BenchConfig, LoadgenError> {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        BenchConfig::from_args(&Cli::parse_from(full).args)
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999h"), None);
    }

    #[test]
    fn defaults_are_bounded() {
        let c = config(&[]).unwrap();
        assert_eq!(c.duration, DEFAULT_DURATION);
        assert_eq!(c.pace, Pace::Rate { rate_per_s: 1000 });
        assert_eq!(c.path, "/api/v1/sms/send");
        let c = config(&["--rate", "max", "--requests", "100"]).unwrap();
        assert_eq!(c.duration, DEFAULT_MAX_MODE_CAP);
        let c = config(&["--rate", "100", "--requests", "250"]).unwrap();
        assert!(
            c.duration > Duration::from_millis(2490) && c.duration < Duration::from_millis(2510)
        );
        let c = config(&[
            "--url",
            "http://localhost:9/prefix/",
            "--header",
            "X-App-ID: 1",
        ])
        .unwrap();
        assert_eq!(c.path, "/prefix/api/v1/sms/send");
        assert_eq!(c.host, "localhost:9");
        assert_eq!(c.headers, vec![("X-App-ID".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn bad_arguments_are_explained() {
        for argv in [
            &["--rate", "0"][..],
            &["--rate", "fast"],
            &["--connections", "0"],
            &["--pipeline", "5000"],
            &["--duration", "2h"],
            &["--duration", "0s"],
            &["--requests", "0"],
            &["--url", "https://x:1"],
            &["--url", "ftp://x"],
            &["--header", "broken"],
            &["--text-mix", "gsm7=0"],
            &["--max-error-rate", "2"],
        ] {
            let err = config(argv).expect_err(&format!("{argv:?} accepted"));
            assert!(!err.to_string().is_empty());
        }
        // gRPC modes exist; only REST has batch requests.
        let err = config(&["--protocol", "grpc", "--batch", "10"]).unwrap_err();
        assert!(err.to_string().contains("gRPC"), "{err}");
        let c = config(&[
            "--spawn-sim",
            "--sim-arg=--dlr-percent=0",
            "--sim-arg",
            "--cores=1",
        ]);
        assert!(c.is_ok());
    }
}
