//! One core's world: its REST listener, its pipeline, its SMPP binds, and the tasks that feed
//! receipts and bind health back into the shared state.
//!
//! * `pipeline` — the life of a message, stage by stage, in one place.
//! * `stages` — the admission slots (auth, limit, policy).
//! * `gateway` — `smsgw serve`: builds the shared parts, starts the shards, handles shutdown.

pub mod batch;
pub mod gateway;
// gRPC calls executed on the shard (tonic itself runs on the side runtime).
pub mod grpc;
pub mod pipeline;
pub mod recovery;
pub mod stages;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::api::rest::RestApi;
use crate::api::server::{self, ServerConfig};
use crate::config::{LinkConfig, LinkId};
use crate::route::LinkState;
use crate::runtime::ShardContext;
use crate::smpp::io::{self, BindConfig, BindEvents, BindState, Inbound};
use crate::smpp::receipt::{self, ReceiptState};
use crate::smpp::session::BindMode;
use crate::state::{ReceiptInfo, ReceiptOutcome, Status};
use pipeline::{Handover, LocalBind, Pipeline, Shared};

/// What a shard receives from the starting thread.
pub struct ShardInit {
    pub listener: std::net::TcpListener,
    pub inbox: async_channel::Receiver<Handover>,
    /// gRPC calls for this shard (`None` with `grpc_enabled = false`).
    pub grpc: Option<async_channel::Receiver<grpc::GrpcCall>>,
}

/// Bound of one shard's inbound event channel (receipts, bind state changes) from its binds.
const INBOUND_CAPACITY: usize = 4096;
/// How often bind health is re-evaluated from the binds' enquire_link results. This reads local
/// state only (no I/O); the enquire_link itself is sent by each bind every `enquire_interval`.
const HEALTH_TICK: Duration = Duration::from_millis(250);
/// A receipt whose id is not found yet may have overtaken its submit_sm_resp (an SMSC may send
/// the receipt before the resp, and the resp may take up to the link's `resp_timeout`) or the
/// write that records it: look again with doubling delays from this one, for as long as the
/// resp could still come (`resp_timeout` + [`RECEIPT_WAIT_SLACK`]), at most this many times,
/// before acknowledging it as unknown. Waiting holds one of the bind's bounded unanswered
/// delivers, which is the flow control we want: the SMSC slows down instead of us dropping.
const RECEIPT_RETRIES: u32 = 12;
const RECEIPT_RETRY_DELAY: Duration = Duration::from_millis(25);
const RECEIPT_RETRY_MAX_DELAY: Duration = Duration::from_millis(1000);
const RECEIPT_WAIT_SLACK: Duration = Duration::from_millis(500);

/// The shard's whole life: start binds and tasks, serve REST until shutdown, then drain.
pub async fn run(ctx: ShardContext, init: ShardInit, shared: Arc<Shared>) {
    let config = &shared.config;
    let deadline_budget = config.server.shutdown_timeout;
    let (events_tx, events_rx) = async_channel::bounded::<Inbound>(INBOUND_CAPACITY);

    // This shard's binds.
    let mut binds: BTreeMap<LinkId, Vec<LocalBind>> = BTreeMap::new();
    for link in shared.registry.links() {
        for index in shared.registry.binds_for_shard(link.id, ctx.id) {
            for &mode in link.session_modes() {
                let cfg = bind_config(link, index, mode, deadline_budget);
                let handle = io::spawn_bind(
                    cfg,
                    BindEvents {
                        inbound: events_tx.clone(),
                    },
                );
                info!(
                    shard = ctx.id,
                    link = link.id.0,
                    bind = index,
                    ?mode,
                    "bind started"
                );
                binds.entry(link.id).or_default().push(LocalBind {
                    index,
                    handle,
                    can_submit: mode != BindMode::Receiver,
                });
            }
        }
    }
    drop(events_tx);
    shared.metrics.shard(ctx.id).set_driver(ctx.driver);

    let pipeline = Rc::new(Pipeline::new(
        ctx.id,
        Arc::clone(&shared),
        stages::Stages {
            auth: Box::new(crate::auth::AuthStage::new(
                Arc::clone(&shared.auth),
                Arc::clone(&shared.registry),
            )),
            limit: Box::new(shared.limits.stage(ctx.id)),
            policy: match &shared.policy {
                Some(engine) => crate::policy::remote::stage(&shared.config.policy, engine),
                None => Box::new(stages::PassThrough("policy")),
            },
        },
        binds,
    ));

    monoio::spawn(inbound_loop(Rc::clone(&pipeline), events_rx));
    // The loops that wait on channels shared with other threads are joined before this
    // function returns (see the end): a task left pending there would outlive this thread,
    // held only by the waker it left in the channel, and be freed by whichever thread drops the
    // channel last, from inside the channel's own lock, which deadlocked `serve`'s exit.
    let inbox = init.inbox.clone();
    let handover_task = monoio::spawn(handover_loop(Rc::clone(&pipeline), init.inbox));
    let grpc_task = init.grpc.map(|calls| {
        let rx = calls.clone();
        (
            rx,
            monoio::spawn(grpc::shard_loop(Rc::clone(&pipeline), calls)),
        )
    });
    monoio::spawn(health_loop(Rc::clone(&pipeline), ctx.shutdown.clone()));

    let server_cfg = Rc::new(ServerConfig {
        limits: crate::api::http::Limits {
            max_body_bytes: config.server.max_body_bytes.get(),
            max_pipeline_depth: config.server.max_pipeline_depth.get() as usize,
            ..Default::default()
        },
        max_connections: config.server.max_connections_per_shard.get() as usize,
        ..Default::default()
    });
    let listener = match monoio::net::TcpListener::from_std(init.listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(shard = ctx.id, error = %e, "cannot register the listener; shard stops");
            return;
        }
    };
    let started = Instant::now();
    let api = Rc::new(RestApi::new(Rc::clone(&pipeline)));
    // Half of the shutdown budget for in-flight HTTP requests, the rest for session windows.
    server::serve(
        listener,
        api,
        server_cfg,
        ctx.shutdown.clone(),
        deadline_budget / 2,
    )
    .await;
    let drain_started = Instant::now();
    for (link, list) in pipeline.local_binds() {
        for b in list {
            b.handle.shutdown().await;
            debug!(
                shard = ctx.id,
                link = link.0,
                bind = b.index,
                "bind shut down"
            );
        }
    }
    // Closing a receiver closes the channel: queued items are still taken, then the loops end.
    inbox.close();
    if monoio::time::timeout(LOOP_JOIN_TIMEOUT, handover_task)
        .await
        .is_err()
    {
        warn!(shard = ctx.id, "hand-over loop did not end in time");
    }
    if let Some((calls, task)) = grpc_task {
        calls.close();
        if monoio::time::timeout(LOOP_JOIN_TIMEOUT, task)
            .await
            .is_err()
        {
            warn!(shard = ctx.id, "gRPC loop did not end in time");
        }
    }
    info!(
        shard = ctx.id,
        uptime_s = started.elapsed().as_secs(),
        drain_ms = drain_started.elapsed().as_millis() as u64,
        "shard drained"
    );
}

/// How long a shard waits at exit for its channel loops to take what is queued and end.
const LOOP_JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The `BindConfig` of bind `index` of `link` (one session of it, `mode`).
pub fn bind_config(
    link: &LinkConfig,
    index: u32,
    mode: BindMode,
    shutdown_budget: Duration,
) -> BindConfig {
    let mut cfg = BindConfig::new(
        link.host.clone(),
        link.port,
        link.system_id.clone(),
        link.password.expose(),
    );
    cfg.link_id = link.id.0;
    cfg.bind_index = index;
    cfg.system_type = link.system_type.clone();
    cfg.bind_mode = mode;
    cfg.window = link.window.get() as usize;
    cfg.max_pending = link.max_pending.get() as usize;
    cfg.resp_timeout = link.resp_timeout;
    cfg.enquire_interval = link.enquire_interval;
    cfg.connect_timeout = link.connect_timeout;
    cfg.reconnect_min = link.reconnect_min;
    cfg.reconnect_max = link.reconnect_max;
    cfg.throttle_backoff = link.throttle_backoff;
    // Leave room inside the shutdown budget for the unbind itself.
    cfg.drain_timeout = (shutdown_budget / 2).min(cfg.drain_timeout);
    cfg
}

/// Receipts and bind state changes from this shard's binds.
async fn inbound_loop(pipeline: Rc<Pipeline>, events: async_channel::Receiver<Inbound>) {
    while let Ok(event) = events.recv().await {
        match event {
            Inbound::Deliver {
                link_id,
                bind_index,
                pdu,
                ack,
            } => {
                // Each receipt waits for a durable store write; handle them concurrently (the
                // bind bounds how many are unacknowledged at once).
                let p = Rc::clone(&pipeline);
                monoio::spawn(async move {
                    if let Some(status) = handle_deliver(&p, link_id, bind_index, &pdu).await {
                        ack.ack(status);
                    }
                    // `None`: store down; dropping `ack` answers a temporary error so the SMSC
                    // sends the receipt again later.
                });
            }
            Inbound::DataSm { ack, link_id, .. } => {
                debug!(
                    link = link_id,
                    "data_sm received; not supported yet, acknowledged"
                );
                ack.ack(0);
            }
            Inbound::State {
                link_id,
                bind_index,
                state,
            } => {
                // The event does not say which session of a `tx+rx` bind changed: the bind's
                // health is that of the session that can submit, read from its handle.
                let submit_state = pipeline
                    .local_binds()
                    .get(&LinkId(link_id))
                    .and_then(|l| l.iter().find(|b| b.index == bind_index && b.can_submit))
                    .map(|b| b.handle.state());
                if let Some(current) = submit_state {
                    let up = matches!(current, BindState::Bound { .. });
                    report(pipeline.shared.health.report_bind_state(
                        LinkId(link_id),
                        bind_index,
                        up,
                        Instant::now(),
                    ));
                }
                info!(link = link_id, bind = bind_index, ?state, "bind state");
            }
            Inbound::LateResponse {
                link_id,
                tag,
                part,
                status,
                message_id,
                ..
            } => {
                warn!(
                    link = link_id,
                    tag,
                    part,
                    status,
                    message_id,
                    "late submit_sm_resp after the part was reported unknown"
                );
            }
        }
    }
}

fn report(t: Option<crate::route::Transition>) {
    if let Some(t) = t {
        match t.state {
            LinkState::Connected => info!(link = t.link.0, "link connected"),
            LinkState::Disconnected => warn!(link = t.link.0, "link disconnected"),
        }
    }
}

/// Parses and stores one deliver_sm. Returns the deliver_sm_resp status to send, or `None`
/// to withhold the answer (the store is down: the SMSC must send it again).
async fn handle_deliver(
    p: &Pipeline,
    link_id: u32,
    bind_index: u32,
    pdu: &crate::smpp::pdu::SubmitSm,
) -> Option<u32> {
    let receipt = match receipt::parse(pdu) {
        Ok(Some(r)) => r,
        Ok(None) => {
            debug!(
                link = link_id,
                "mobile-originated message received; not supported yet, acknowledged"
            );
            return Some(0);
        }
        Err(e) => {
            // Acknowledge: a receipt we cannot read will not become readable by resending it.
            p.shared.metrics.shard(p.shard_id).receipts_unparsable.inc();
            warn!(link = link_id, bind = bind_index, error = %e, "unparsable receipt acknowledged");
            return Some(0);
        }
    };
    let Some(link) = p.shared.registry.link(LinkId(link_id)) else {
        return Some(0);
    };
    let id_format = pipeline::receipt_id_format(link.dlr_id_format);
    let smsc_id = receipt::normalize_id(&receipt.message_id, id_format);
    // Some SMSCs put hex in the TLV id and decimal in the text's `id:`: when the first matches
    // nothing, the text's id is tried too (at most one extra lookup per attempt).
    let alt_id = receipt
        .text_message_id
        .as_deref()
        .map(|t| receipt::normalize_id(t, id_format))
        .filter(|a| *a != smsc_id);
    let info = ReceiptInfo {
        status: receipt_status(receipt.state),
        stat: receipt
            .stat_raw
            .clone()
            .unwrap_or_else(|| receipt.state.stat_word().to_string()),
        err: receipt.err_raw.clone(),
        done_at_ms: None,
        received_at_ms: crate::state::unix_ms(),
    };
    let wait_until = std::time::Instant::now() + link.resp_timeout + RECEIPT_WAIT_SLACK;
    let mut delay = RECEIPT_RETRY_DELAY;
    for attempt in 0..=RECEIPT_RETRIES {
        let mut result = p
            .shared
            .store
            .apply_receipt(link_id, smsc_id.clone(), info.clone())
            .await;
        if let (Ok(ReceiptOutcome::NotFound), Some(alt)) = (&result, &alt_id) {
            result = p
                .shared
                .store
                .apply_receipt(link_id, alt.clone(), info.clone())
                .await;
        }
        match result {
            Ok(ReceiptOutcome::Applied(record)) => {
                // `Applied` means a non-final part became final (repeats and receipts after
                // final answer `Duplicate`), so a final message became final with this one.
                if record.status.is_final() {
                    p.shared.cdr.emit(
                        &record,
                        &p.shared.config.server.instance_id,
                        crate::state::unix_ms(),
                    );
                    // The callback event is durable before deliver_sm_resp: a crash before
                    // this point makes the SMSC resend, which the `Duplicate` arm re-notifies.
                    if let Some(durable) = p.shared.callbacks.notify(&record) {
                        crate::callback::wait_on_shard(durable).await;
                    }
                }
                let m = p.shared.metrics.shard(p.shard_id);
                m.receipts_applied.inc();
                let delay_ms = info.received_at_ms.saturating_sub(record.created_at_ms);
                m.receipt_delay
                    .observe(std::time::Duration::from_millis(delay_ms));
                return Some(0);
            }
            Ok(ReceiptOutcome::Duplicate) => {
                // A final receipt sent again may mean we crashed after storing it and before
                // its callback event was durable: notify again (the outbox ignores an event id
                // it still holds; one already delivered is sent once more — receivers dedupe).
                if info.status.is_final() && p.shared.callbacks.is_enabled() {
                    renotify(p, link_id, &smsc_id, alt_id.as_deref()).await;
                }
                p.shared.metrics.shard(p.shard_id).receipts_duplicate.inc();
                return Some(0);
            }
            Ok(ReceiptOutcome::NotFound)
                if attempt < RECEIPT_RETRIES && std::time::Instant::now() < wait_until =>
            {
                monoio::time::sleep(delay).await;
                delay = (delay * 2).min(RECEIPT_RETRY_MAX_DELAY);
            }
            Ok(ReceiptOutcome::NotFound) => {
                p.shared.metrics.shard(p.shard_id).receipts_unmatched.inc();
                warn!(
                    link = link_id,
                    smsc_id, "receipt for an unknown message id acknowledged"
                );
                return Some(0);
            }
            Err(e) if e.is_unavailable() => {
                p.shared
                    .metrics
                    .shard(p.shard_id)
                    .receipts_not_acked_store_down
                    .inc();
                warn!(link = link_id, error = %e, "state store unavailable: receipt not acknowledged");
                return None;
            }
            Err(e) => {
                warn!(link = link_id, error = %e, "receipt could not be applied; acknowledged");
                return Some(0);
            }
        }
    }
    Some(0)
}

/// Looks up the message a repeated final receipt belongs to and notifies its callback again
/// if it is final (see `handle_deliver`). Two reads; only for repeats of final receipts.
async fn renotify(p: &Pipeline, link_id: u32, smsc_id: &str, alt_id: Option<&str>) {
    let store = &p.shared.store;
    let mut found = store.find_by_smsc_id(link_id, smsc_id.to_owned()).await;
    if let (Ok(None), Some(alt)) = (&found, alt_id) {
        found = store.find_by_smsc_id(link_id, alt.to_owned()).await;
    }
    if let Ok(Some((key, _))) = found
        && let Ok(Some(record)) = store.get(key).await
        && record.status.is_final()
        && let Some(durable) = p.shared.callbacks.notify(&record)
    {
        crate::callback::wait_on_shard(durable).await;
    }
}

/// A receipt's state as a part status. Intermediate states map to `Submitted` (no change).
pub fn receipt_status(s: ReceiptState) -> Status {
    match s {
        ReceiptState::Delivered => Status::Delivered,
        ReceiptState::Expired => Status::Expired,
        ReceiptState::Undeliverable | ReceiptState::Deleted => Status::Undeliverable,
        ReceiptState::Rejected => Status::Rejected,
        ReceiptState::Enroute | ReceiptState::Accepted | ReceiptState::Unknown => Status::Submitted,
    }
}

/// Messages handed over by other shards: run each one here and send its answer back.
async fn handover_loop(pipeline: Rc<Pipeline>, inbox: async_channel::Receiver<Handover>) {
    while let Ok(Handover { job, reply }) = inbox.recv().await {
        let p = Rc::clone(&pipeline);
        monoio::spawn(async move {
            let answer = p.execute(job).await;
            let _ = reply.try_send(answer);
        });
    }
}

/// Feeds enquire_link results of this shard's binds into the shared health table: a bound bind
/// becomes up once it has answered an enquire_link since it bound. There is no "stale" check
/// here: the session itself declares the link dead when an enquire_link goes unanswered, and the
/// resulting `Down` state reaches the table through `inbound_loop`. (Under traffic a session
/// sends no enquire_link at all, so staleness of the last answer would be a false alarm.)
async fn health_loop(pipeline: Rc<Pipeline>, shutdown: crate::runtime::Shutdown) {
    let health = Arc::clone(&pipeline.shared.health);
    let mut sampler = crate::metrics::LinkSampler::default();
    while !shutdown.is_triggered() {
        let now = Instant::now();
        let metrics = &pipeline.shared.metrics;
        sampler.sample(
            metrics.shard(pipeline.shard_id),
            |l| metrics.link_index(l),
            pipeline
                .local_binds()
                .iter()
                .map(|(l, b)| (l.0, b.as_slice())),
        );
        for (link, list) in pipeline.local_binds() {
            for b in list.iter().filter(|b| b.can_submit) {
                let (outstanding, queued) = b.handle.load();
                pipeline
                    .shared
                    .bind_load
                    .publish(*link, b.index, outstanding, queued);
                // Reconcile every tick: state events are best effort (dropped when the channel
                // is full), the handle's state is not.
                let BindState::Bound { since } = b.handle.state() else {
                    report(health.report_bind_state(*link, b.index, false, now));
                    continue;
                };
                report(health.report_bind_state(*link, b.index, true, now));
                if b.handle.last_enquire_ok().is_some_and(|t| t >= since) {
                    report(health.report_enquire_ok(*link, b.index, now));
                }
            }
        }
        monoio::select! {
            _ = monoio::time::sleep(HEALTH_TICK) => {},
            _ = shutdown.wait() => {},
        }
    }
}
