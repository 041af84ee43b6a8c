//! `smsgw bench --protocol grpc | grpc-stream`: the same open-loop schedule, HDR histogram and
//! report as REST, over a tonic client generated from `proto/` by the same build.rs.
//!
//! * `grpc`: unary `SendMessage`. Each of `--connections` HTTP/2 connections owns the slots
//!   `k, k + C, ...` of the global schedule ([`super::schedule`]) and keeps at most
//!   `--pipeline` calls outstanding (HTTP/2 multiplexing plays the role of pipelining).
//! * `grpc-stream`: one `SendMessageStream` per connection; requests go out at their due time,
//!   responses are matched by `task_id` (= the slot number), at most `--pipeline` unanswered.
//!
//! Latency is measured from the slot's due time (open loop; a stalled server shows as latency,
//! no coordinated omission) or from the actual send (`--rate max`). Rejections are counted by
//! gRPC code and the gateway's machine-readable code (the prefix of the status message); a
//! status without that prefix (no answer from the gateway: connect refused, reset) is a
//! transport error. Runs on a tokio runtime with `--threads` workers (tonic needs tokio), so
//! due times use tokio's 1 ms timer (`--timer` and `--pin` apply to REST only); the send lag
//! in the report shows how late requests went out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::client::LiveCounters;
use super::payload::{TextKind, TextMix};
use super::report::{self, Report, Stats};
use super::schedule::{self, ConnSchedule, Pace, due_offset};
use super::{BenchConfig, LoadgenError, Protocol, invalid};
use crate::api::grpc::pb::sms::v1::sms_service_client::SmsServiceClient;
use crate::api::grpc::pb::sms::v1::{SmsRequest, SmsResponse};

/// Builds the `SmsRequest` of global slot `g`: destinations rotate, texts follow the mix, and
/// the transaction id is unique to this run (reruns do not hit the idempotency check).
#[derive(Debug)]
struct Template {
    esme: i64,
    source: String,
    destination_base: u64,
    destinations: u64,
    mix: TextMix,
    texts: Vec<(TextKind, String)>,
    run_id: String,
}

impl Template {
    fn new(config: &BenchConfig, run_id: String) -> Template {
        Template {
            esme: i64::try_from(config.esme).unwrap_or(i64::MAX),
            source: config.source.clone(),
            destination_base: config.destination_base,
            destinations: config.destinations.max(1),
            mix: config.text_mix.clone(),
            texts: config
                .text_mix
                .kinds()
                .into_iter()
                .map(|k| (k, k.text()))
                .collect(),
            run_id,
        }
    }

    fn request(&self, g: u64) -> SmsRequest {
        let kind = self.mix.kind_for(g);
        let message = self
            .texts
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| kind.text());
        SmsRequest {
            task_id: i64::try_from(g).unwrap_or(i64::MAX),
            transaction_id: format!("{}-{g}", self.run_id),
            esme: self.esme,
            saddr: self.source.clone(),
            daddr: format!(
                "{}",
                self.destination_base.wrapping_add(g % self.destinations)
            ),
            message,
            ..Default::default()
        }
    }
}

/// `--header` values as gRPC metadata: names lower-cased; REST's `X-App-ID` becomes the
/// reference's `app_id` key.
fn metadata(headers: &[(String, String)]) -> Result<MetadataMap, LoadgenError> {
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let mut key = name.to_ascii_lowercase();
        if key == "x-app-id" {
            key = "app_id".into();
        }
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| invalid("--header", format!("`{name}` is not a gRPC metadata key")))?;
        let value: MetadataValue<_> = value
            .parse()
            .map_err(|_| invalid("--header", format!("the value of `{name}` is not ASCII")))?;
        md.insert(key, value);
    }
    Ok(md)
}

/// The gateway's code from a status message `"<code>: <text>"`; `None` when the status did
/// not come from the gateway (tonic's own transport errors have no such prefix).
fn gateway_code(message: &str) -> Option<&str> {
    let (code, _) = message.split_once(": ")?;
    (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(code)
}

/// What one run shares between its connection tasks.
struct Ctx {
    pace: Pace,
    start: Instant,
    total_slots: u64,
    connections: u64,
    pipeline: usize,
    send_deadline: Instant,
    drain_deadline: Instant,
    template: Template,
    metadata: MetadataMap,
    live: Arc<LiveCounters>,
    lag: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Ctx {
    /// Late open-loop slots may still go out until the drain deadline (a slow server then
    /// shows as latency, not as skipped requests); closed loop stops at the send deadline.
    fn last_send(&self) -> Instant {
        match self.pace {
            Pace::Rate { .. } => self.drain_deadline,
            Pace::Max => self.send_deadline,
        }
    }

    fn due(&self, g: u64) -> Option<Instant> {
        match self.pace {
            Pace::Rate { rate_per_s } => Some(self.start + due_offset(g, rate_per_s)),
            Pace::Max => None,
        }
    }

    fn request(&self, g: u64) -> tonic::Request<SmsRequest> {
        let mut r = tonic::Request::new(self.template.request(g));
        *r.metadata_mut() = self.metadata.clone();
        r
    }

    fn record_lag(&self, due: Instant, now: Instant) {
        let ns = u64::try_from(now.saturating_duration_since(due).as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut h) = self.lag.lock() {
            h.saturating_record(ns.max(1));
        }
    }
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    // A panicking task cannot leave Stats half-updated in a way that matters for a report.
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records one answered call.
fn record_answer(
    ctx: &Ctx,
    stats: &Mutex<Stats>,
    started: Instant,
    r: &Result<SmsResponse, tonic::Status>,
) {
    let mut s = lock(stats);
    let now = Instant::now();
    match r {
        Ok(resp) if resp.success => {
            s.record_latency(now - started);
            s.accepted += 1;
            ctx.live.answered.fetch_add(1, Ordering::Relaxed);
            ctx.live.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(resp) => {
            // A stream item the gateway refused: its gRPC code and machine-readable code.
            s.record_latency(now - started);
            let code = u16::try_from(resp.grpc_code).unwrap_or(u16::MAX);
            s.record_rejection(code, resp.code.as_bytes());
            ctx.live.answered.fetch_add(1, Ordering::Relaxed);
            ctx.live.errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(status) => match gateway_code(status.message()) {
            Some(code) => {
                s.record_latency(now - started);
                s.record_rejection(status.code() as u16, code.as_bytes());
                ctx.live.answered.fetch_add(1, Ordering::Relaxed);
                ctx.live.errors.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                s.transport_errors += 1;
                s.record_error_kind(&format!("grpc {:?}", status.code()));
                ctx.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        },
    }
    if !s.latency_ns.is_empty() {
        s.last_response = now.saturating_duration_since(ctx.start);
    }
}

fn count_sent(ctx: &Ctx, stats: &Mutex<Stats>) {
    lock(stats).sent += 1;
    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
}

/// Slots this connection never sent (open loop only): the run ended before they were due.
fn count_unsent(ctx: &Ctx, stats: &Mutex<Stats>, schedule: &mut ConnSchedule) {
    if matches!(ctx.pace, Pace::Rate { .. }) {
        let unsent = schedule.abandon();
        if unsent > 0 {
            lock(stats).unsent += unsent;
            ctx.live.errors.fetch_add(unsent, Ordering::Relaxed);
        }
    }
}

/// Waits until slot `g` is due; the time latency is measured from.
async fn wait_due(ctx: &Ctx, g: u64) -> Instant {
    match ctx.due(g) {
        Some(due) => {
            tokio::time::sleep_until(due.into()).await;
            due
        }
        None => Instant::now(),
    }
}

/// Unary calls on one connection, at most `pipeline` outstanding.
async fn unary_connection(ctx: Arc<Ctx>, channel: Channel, k: u64, stats: Arc<Mutex<Stats>>) {
    let client = SmsServiceClient::new(channel);
    let permits = Arc::new(Semaphore::new(ctx.pipeline));
    let mut schedule = ConnSchedule::new(k, ctx.connections, ctx.total_slots);
    let last_send = ctx.last_send();
    let mut calls = tokio::task::JoinSet::new();
    while let Some(g) = schedule.peek() {
        if ctx.due(g).is_some_and(|d| d >= last_send) {
            break;
        }
        let due = wait_due(&ctx, g).await;
        // Waiting for a free slot counts as latency (the due time does not move).
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            () = tokio::time::sleep_until(last_send.into()) => break,
        };
        let Ok(permit) = permit else { break };
        let now = Instant::now();
        if now >= last_send {
            break;
        }
        let started = if ctx.pace == Pace::Max { now } else { due };
        ctx.record_lag(started, now);
        schedule.advance();
        count_sent(&ctx, &stats);
        let (ctx, stats, mut client) = (Arc::clone(&ctx), Arc::clone(&stats), client.clone());
        calls.spawn(async move {
            let left = ctx.drain_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client.send_message(ctx.request(g))).await {
                Ok(r) => record_answer(&ctx, &stats, started, &r.map(tonic::Response::into_inner)),
                Err(_) => {
                    lock(&stats).timeouts += 1;
                    ctx.live.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        // Reap finished calls so the set stays as small as the permits allow.
        while calls.try_join_next().is_some() {}
    }
    count_unsent(&ctx, &stats, &mut schedule);
    while calls.join_next().await.is_some() {}
}

/// One bidirectional stream on one connection, at most `pipeline` requests unanswered.
async fn stream_connection(ctx: Arc<Ctx>, channel: Channel, k: u64, stats: Arc<Mutex<Stats>>) {
    let mut client = SmsServiceClient::new(channel);
    let permits = Arc::new(Semaphore::new(ctx.pipeline));
    // Slot → the time its latency counts from, for requests sent and not yet answered.
    let outstanding: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<SmsRequest>(ctx.pipeline);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    *req.metadata_mut() = ctx.metadata.clone();

    let reader = {
        let (ctx, stats, outstanding, permits) = (
            Arc::clone(&ctx),
            Arc::clone(&stats),
            Arc::clone(&outstanding),
            Arc::clone(&permits),
        );
        tokio::spawn(async move {
            let deadline = ctx.drain_deadline;
            let call = tokio::time::timeout_at(deadline.into(), client.send_message_stream(req));
            let mut inbound = match call.await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    lock(&stats).record_error_kind(&format!("stream open: {:?}", s.code()));
                    permits.close();
                    return;
                }
                Err(_) => {
                    permits.close();
                    return;
                }
            };
            loop {
                match tokio::time::timeout_at(deadline.into(), inbound.message()).await {
                    Ok(Ok(Some(resp))) => {
                        let started = outstanding
                            .lock()
                            .ok()
                            .and_then(|mut m| m.remove(&resp.task_id));
                        if let Some(started) = started {
                            record_answer(&ctx, &stats, started, &Ok(resp));
                            permits.add_permits(1);
                        } else {
                            lock(&stats).record_error_kind("stream: answer for an unknown task_id");
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(s)) => {
                        lock(&stats).record_error_kind(&format!("stream: {:?}", s.code()));
                        break;
                    }
                    Err(_) => break,
                }
            }
            // No more answers: the sender must not wait for permits that never come back.
            permits.close();
        })
    };

    let mut schedule = ConnSchedule::new(k, ctx.connections, ctx.total_slots);
    let last_send = ctx.last_send();
    while let Some(g) = schedule.peek() {
        if ctx.due(g).is_some_and(|d| d >= last_send) {
            break;
        }
        let due = wait_due(&ctx, g).await;
        let permit = tokio::select! {
            p = permits.acquire() => p,
            () = tokio::time::sleep_until(last_send.into()) => break,
        };
        let Ok(permit) = permit else { break };
        // Given back by the reader when the answer arrives.
        permit.forget();
        let now = Instant::now();
        if now >= last_send {
            break;
        }
        let started = if ctx.pace == Pace::Max { now } else { due };
        ctx.record_lag(started, now);
        if let Ok(mut m) = outstanding.lock() {
            m.insert(i64::try_from(g).unwrap_or(i64::MAX), started);
        }
        schedule.advance();
        count_sent(&ctx, &stats);
        if tx.send(ctx.template.request(g)).await.is_err() {
            break;
        }
    }
    // Ends the request stream: the server answers what it has and closes.
    drop(tx);
    count_unsent(&ctx, &stats, &mut schedule);
    let _ = reader.await;
    let lost = outstanding.lock().map(|m| m.len() as u64).unwrap_or(0);
    if lost > 0 {
        let mut s = lock(&stats);
        if Instant::now() >= ctx.drain_deadline {
            s.timeouts += lost;
        } else {
            s.transport_errors += lost;
        }
        ctx.live.errors.fetch_add(lost, Ordering::Relaxed);
    }
}

/// Runs a gRPC bench to completion (blocks the calling thread).
pub fn run_bench(config: &BenchConfig) -> Result<Report, LoadgenError> {
    if config.batch > 0 {
        return Err(invalid(
            "--batch",
            "batch requests are REST only; use --protocol grpc-stream for bulk gRPC",
        ));
    }
    let stream = config.protocol == Protocol::GrpcStream;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .thread_name("bench-grpc")
        .enable_all()
        .build()
        .map_err(LoadgenError::Runtime)?;
    let run_id = format!(
        "g{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let md = metadata(&config.headers)?;
    let url = format!("http://{}", config.target);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| invalid("--url", e.to_string()))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true);
    let live = Arc::new(LiveCounters::default());
    let progress = config.progress;
    let report = runtime.block_on(async {
        // Connections are opened before the first slot is due (not measured); a connection
        // that fails is counted and retried lazily by tonic on its first call.
        let mut channels = Vec::with_capacity(config.connections);
        let mut connect_errors = Vec::new();
        for _ in 0..config.connections {
            match endpoint.connect().await {
                Ok(c) => channels.push(c),
                Err(e) => {
                    connect_errors.push(format!("connect: {e}"));
                    channels.push(endpoint.connect_lazy());
                }
            }
        }
        let start = Instant::now() + Duration::from_millis(50);
        let ctx = Arc::new(Ctx {
            pace: config.pace,
            start,
            total_slots: schedule::total_slots(config.pace, config.duration, config.requests),
            connections: config.connections as u64,
            pipeline: config.pipeline,
            send_deadline: start + config.duration,
            drain_deadline: start + config.duration + config.drain_timeout,
            template: Template::new(config, run_id),
            metadata: md,
            live: Arc::clone(&live),
            lag: Mutex::new(Stats::new().latency_ns),
        });
        let progress_task = progress.then(|| {
            let live = [Arc::clone(&live)];
            tokio::spawn(async move {
                let mut last = 0;
                let mut tick = tokio::time::interval_at(
                    (start + Duration::from_secs(1)).into(),
                    Duration::from_secs(1),
                );
                loop {
                    tick.tick().await;
                    last = super::print_progress(&live, start, last);
                }
            })
        });
        let mut tasks = Vec::with_capacity(channels.len());
        for (k, channel) in channels.into_iter().enumerate() {
            let stats = Arc::new(Mutex::new(Stats::new()));
            let ctx = Arc::clone(&ctx);
            let s = Arc::clone(&stats);
            let task = if stream {
                tokio::spawn(stream_connection(ctx, channel, k as u64, s))
            } else {
                tokio::spawn(unary_connection(ctx, channel, k as u64, s))
            };
            tasks.push((task, stats));
        }
        let mut total = Stats::new();
        for e in &connect_errors {
            total.connect_errors += 1;
            total.record_error_kind(e);
        }
        for (task, stats) in tasks {
            let _ = task.await;
            total.merge(&lock(&stats));
        }
        if let Some(t) = progress_task {
            t.abort();
        }
        let elapsed = if total.last_response.is_zero() {
            config.duration
        } else {
            total.last_response
        };
        let mut report = Report::new(
            report::RunInfo {
                target: format!(
                    "grpc{} {url}/sms.v1.SmsService/{}",
                    if stream { "-stream" } else { "" },
                    if stream {
                        "SendMessageStream"
                    } else {
                        "SendMessage"
                    }
                ),
                rate_per_s: match config.pace {
                    Pace::Rate { rate_per_s } => Some(rate_per_s),
                    Pace::Max => None,
                },
                connections: config.connections,
                pipeline: config.pipeline,
                batch: 0,
                threads: config.threads,
                driver: "tokio".into(),
                elapsed,
            },
            total,
        );
        let lag = ctx.lag.lock().map(|h| h.clone()).ok();
        if let Some(lag) = lag {
            report.set_send_lag(&lag);
        }
        report
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_codes_are_told_from_transport_errors() {
        assert_eq!(
            gateway_code("rate_limited: slow down"),
            Some("rate_limited")
        );
        assert_eq!(gateway_code("tcp connect error: refused"), None);
        assert_eq!(gateway_code("transport error"), None);
        assert_eq!(gateway_code(": x"), None);
    }

    #[test]
    fn headers_become_metadata() {
        let md = metadata(&[
            ("Authorization".into(), "Bearer abc".into()),
            ("X-App-ID".into(), "7".into()),
        ])
        .unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer abc");
        assert_eq!(md.get("app_id").unwrap(), "7");
        assert!(metadata(&[("bad key".into(), "x".into())]).is_err());
    }
}
