//! `smsgw serve`: build the process-wide parts (registry, health table, state store, hand-over
//! channels, listeners), start the shards, wait for a termination signal, shut down in bounded
//! time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::pipeline::{BindLoad, Shared};
use super::{ShardInit, run};
use crate::config::{Config, FsyncPolicy as ConfigFsync, StateBackend};
use crate::route::{HealthTable, Registry};
use crate::runtime::{self, ShardOptions, TerminationSignals};
use crate::state::{EmbeddedConfig, EmbeddedStore, FsyncPolicy, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the state store: {0}")]
    State(String),
    #[error("state backend {0:?} is not available in this build")]
    Backend(StateBackend),
    #[error("shards did not stop within the shutdown timeout ({0:?})")]
    ShutdownTimeout(Duration),
    #[error("rate limiter: {0}")]
    Limits(String),
    #[error("signal watcher: {0}")]
    Signals(std::io::Error),
    #[error("contact policy: {0}")]
    Policy(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("CDR writer: {0}")]
    Cdr(#[from] crate::cdr::CdrError),
    #[error("delivery callbacks: {0}")]
    Callbacks(#[from] crate::callback::CallbackError),
}

/// Runs the gateway until SIGTERM/SIGINT; returns after a graceful shutdown.
pub fn serve(config: Config, signals: TerminationSignals) -> Result<(), ServeError> {
    let shard_count = config.server.shards.resolve();
    // Taken before any shard can create a record: recovery only touches older records.
    let started_at_ms = crate::state::unix_ms();
    let registry = Arc::new(Registry::new(&config.rules, shard_count));
    let metrics = Arc::new(crate::metrics::Metrics::new(
        shard_count.get(),
        registry.links().map(|l| l.id.0).collect(),
    ));
    // Tokio-only clients (Redis, S3, gRPC, Aerospike) run here; started now so its threads
    // exist before the shards pin theirs, and before the store, which may need it.
    let side = runtime::side_runtime(2)?;
    let store = open_store(&config, &metrics, side.handle())?;
    let health = Arc::new(HealthTable::new(Arc::clone(&registry), Instant::now()));
    let listeners =
        runtime::bind_reuseport(config.server.http_addr, shard_count.get()).map_err(|source| {
            ServeError::Listen {
                addr: config.server.http_addr,
                source,
            }
        })?;
    let http_addr = listeners[0].local_addr().unwrap_or(config.server.http_addr);

    let capacity = config.routing.cross_shard_capacity.get();
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) = (0..shard_count.get())
        .map(|_| async_channel::bounded(capacity))
        .unzip();
    let shutdown_timeout = config.server.shutdown_timeout;
    let bind_load = BindLoad::new(&registry);
    let limits = crate::limit::Limits::from_config(
        &config,
        Arc::clone(&health),
        shard_count.get(),
        side.handle(),
    )
    .map_err(|e| ServeError::Limits(e.to_string()))?;
    let policy = if config.policy.enabled {
        Some(
            crate::policy::mcp::build_engine(
                &config.policy,
                &config.redis,
                side.handle(),
                Duration::from_secs(10),
            )
            .map_err(|e| ServeError::Policy(e.to_string()))?,
        )
    } else {
        None
    };
    let env = |name: &str| std::env::var(name).ok();
    let auth = Arc::new(
        crate::auth::AuthService::start(config.security.clone(), &env)
            .map_err(|e| ServeError::Auth(e.to_string()))?,
    );
    if !config.security.enabled {
        warn!("authentication is DISABLED ([security] enabled = false): every caller is app 0");
    }
    // Own thread; shards only `try_send` to it. Started before the shards so no final
    // transition can miss it.
    let cdr = Arc::new(crate::cdr::CdrWriter::start(
        config.cdr.clone(),
        &config.server.instance_id,
    )?);
    // Weak, like the state probe: the scrape must not keep the writer alive past shutdown.
    let cdr_probe = Arc::downgrade(&cdr);
    let _ = metrics.cdr_probe.set(Box::new(move || {
        cdr_probe
            .upgrade()
            .map_or_else(crate::metrics::CdrBacklog::default, |w| {
                let st = w.stats();
                let closed = st.batches_closed.load(Ordering::Relaxed);
                let written = st.batches_written.load(Ordering::Relaxed);
                crate::metrics::CdrBacklog {
                    queued_records: w.queued_records() as u64,
                    pending_batches: closed.saturating_sub(written),
                    spool_files: st.spool_files.load(Ordering::Relaxed),
                    spool_bytes: st.spool_bytes.load(Ordering::Relaxed),
                }
            })
    }));
    // Outbox writer thread + dispatcher on the side runtime; events an earlier process left
    // are rescheduled at once.
    let mut callback_config = config.callbacks.clone();
    callback_config.path = crate::callback::outbox_dir(&callback_config.path, &config.state.path);
    let callbacks = crate::callback::Callbacks::start(
        callback_config,
        Arc::clone(&auth),
        Arc::clone(&metrics),
        side.handle(),
    )?;
    let shared = Arc::new(Shared {
        callbacks: Arc::clone(&callbacks),
        cdr: Arc::clone(&cdr),
        auth: Arc::clone(&auth),
        policy,
        limits,
        bind_load,
        config,
        registry,
        health,
        store,
        inboxes: inbox_tx,
        metrics,
    });

    let (trigger, shutdown) = runtime::shutdown_pair();
    auth.spawn_poller(shutdown.clone());
    // Crash recovery (records of earlier processes only) and the TTL sweep: see recovery.rs.
    // Only for a store this process owns alone: a shared store holds other replicas' in-flight
    // records, which are not this process's crash leftovers (resubmitting them would send them
    // twice while their owner still works on them). The sweep runs on every replica; the
    // Aerospike store's generation check hands each expired record to exactly one of them.
    // The memory store starts empty: there is nothing to recover (it is not durable).
    if shared.config.state.backend == StateBackend::Embedded {
        super::recovery::spawn_recovery(
            side.handle(),
            // Records recovery closes (unknown) notify their callbacks through this wrapper.
            crate::callback::NotifyingStore::wrap(
                Arc::clone(&shared.store),
                Arc::clone(&callbacks),
            ),
            started_at_ms,
            Some((Arc::clone(&cdr), shared.config.server.instance_id.clone())),
            // Never-sent messages are resubmitted through the shards once their links are up.
            Some(super::recovery::Resubmitter::new(
                Arc::clone(&shared),
                shared.config.state.resubmit_max_age,
            )),
        );
    }
    super::recovery::spawn_expiry_sweep(
        side.handle(),
        // Records the sweep expires notify their callbacks through this wrapper.
        crate::callback::NotifyingStore::wrap(Arc::clone(&shared.store), Arc::clone(&callbacks)),
        super::recovery::SWEEP_INTERVAL,
        super::recovery::SWEEP_PAGE,
        shutdown.clone(),
        Some((Arc::clone(&cdr), shared.config.server.instance_id.clone())),
    );
    let opts = ShardOptions {
        shard_count: shard_count.get(),
        ..ShardOptions::default()
    };
    // gRPC (tonic on the side runtime) hands each call to a shard over bounded channels; the
    // listener is bound here so a port error stops the start like the REST one does.
    let (grpc_bridge, grpc_rx) =
        super::grpc::GrpcBridge::new(shard_count.get(), super::grpc::CHANNEL_CAPACITY);
    let grpc_server = if shared.config.server.grpc_enabled {
        let addr = shared.config.server.grpc_addr;
        let stop = shutdown.clone();
        let server = crate::api::grpc::start(
            side.handle(),
            addr,
            Arc::clone(&grpc_bridge),
            crate::api::grpc::GrpcServerConfig {
                request_timeout: shared.config.server.request_timeout,
                // The REST bound for the whole process: every shard accepts that many.
                max_connections: shared.config.server.max_connections_per_shard.get() as usize
                    * shard_count.get(),
            },
            async move { stop.wait().await },
        )
        .map_err(|source| ServeError::Listen { addr, source })?;
        Some(server)
    } else {
        None
    };
    let mut grpc_rx = grpc_rx.into_iter().filter(|_| grpc_server.is_some());
    let inits: Vec<ShardInit> = listeners
        .into_iter()
        .zip(inbox_rx)
        .map(|(listener, inbox)| ShardInit {
            listener,
            inbox,
            grpc: grpc_rx.next(),
        })
        .collect();
    let shared_for_shards = Arc::clone(&shared);
    let shards = runtime::start_shards(&opts, shutdown, inits, move |ctx, init| {
        run(ctx, init, Arc::clone(&shared_for_shards))
    })?;
    let drivers: Vec<&str> = shards.drivers.iter().map(|d| d.as_str()).collect();
    info!(http = %http_addr, shards = shard_count.get(), ?drivers, "smsgw serving");
    // One plain line on stdout so scripts and tests that configure port 0 learn the address.
    let grpc_addr = grpc_server
        .as_ref()
        .map_or_else(|| "off".to_string(), |g| g.local_addr.to_string());
    info!(grpc = %grpc_addr, "gRPC listener");
    println!(
        "smsgw listening http={http_addr} shards={} drivers={} grpc={grpc_addr}",
        shard_count.get(),
        drivers.join(",")
    );

    let name = signals.wait();
    info!(
        signal = name,
        "termination signal: stopping accept, draining"
    );
    trigger.trigger();
    // tonic saw the trigger too (stops accepting, lets running calls end); calls still queued
    // are taken by the shards, new ones are refused with UNAVAILABLE.
    grpc_bridge.close();
    // Close the hand-over channels so shards waiting on them stop.
    for tx in &shared.inboxes {
        tx.close();
    }
    // A second signal while draining means "now".
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = signals.wait();
            warn!(
                signal = name,
                "second termination signal: exiting without draining"
            );
            std::process::exit(130);
        })
        .map_err(ServeError::Signals)?;
    let deadline = Instant::now() + shutdown_timeout;
    let stopped = shards.join_until(deadline);
    side.shutdown_timeout(Duration::from_millis(200));
    let c = shared.metrics.snapshot();
    info!(
        accepted = c.accepted,
        submitted = c.submitted,
        failed = c.failed,
        receipts = c.receipts_applied,
        receipts_unknown = c.receipts_unmatched,
        "counters at shutdown"
    );
    if !stopped {
        error!(
            ?shutdown_timeout,
            "shards still running at the shutdown deadline"
        );
        // Shards still hold the writer: at least close and write what it has (blocking is
        // fine here, this is the main thread).
        if let Err(e) = cdr.flush() {
            error!(error = %e, "CDR flush at shutdown failed");
        }
        return Err(ServeError::ShutdownTimeout(shutdown_timeout));
    }
    // Dropping the last handle of the store lets its writer finish the batches it holds.
    drop(shared);
    // Shards and the side runtime (TTL sweep) are gone, so no CDR can come after this.
    let report = match Arc::try_unwrap(cdr) {
        Ok(w) => w.shutdown(),
        // A handle outlived the shards (a detached task): flush what was recorded so far; the
        // writer stops when that handle is dropped.
        Err(w) => w.flush(),
    };
    match report {
        Ok(r) if r.batches_pending > 0 || r.records_lost > 0 => warn!(
            batches_pending = r.batches_pending,
            records_lost = r.records_lost,
            "CDR writer stopped with batches not in the sink"
        ),
        Ok(_) => {}
        Err(e) => error!(error = %e, "CDR writer shutdown failed"),
    }
    info!("shutdown complete");
    Ok(())
}

fn open_store(
    config: &Config,
    metrics: &crate::metrics::Metrics,
    side: &tokio::runtime::Handle,
) -> Result<Arc<dyn StateStore>, ServeError> {
    match config.state.backend {
        StateBackend::Embedded if config.state.engine == crate::config::EmbeddedEngine::Journal => {
            let s = &config.state;
            let store =
                crate::state::journal::JournalStore::open(crate::state::journal::JournalConfig {
                    path: s.path.clone(),
                    ttl_secs: s.ttl.as_secs().max(1),
                    sync: s.fsync == ConfigFsync::Batch,
                    max_hot_records: s.hot_max_records,
                    hot_secs: s.hot.as_secs().max(1),
                    checkpoint_interval_ms: (s.checkpoint_interval.as_millis() as u64).max(1),
                    checkpoint_bytes: s.checkpoint_bytes.max(1),
                    key_filter_bytes: s.key_filter_bytes,
                    sync_linger_us: s.sync_linger.as_micros() as u64,
                    op_timeout_ms: s.op_timeout.as_millis() as u64,
                    ..crate::state::journal::JournalConfig::default()
                })
                .map_err(|e| ServeError::State(e.to_string()))?;
            // Weak, like the writer's probe: the scrape must not keep the store (and its
            // checkpoint thread) alive past shutdown. A scrape runs on a shard, which holds
            // the store through `Shared`, so the upgraded handle is never the last one.
            let probe = Arc::downgrade(&store);
            let _ = metrics
                .journal_probe
                .set(Box::new(move || probe.upgrade().map(|s| s.stats())));
            Ok(store)
        }
        StateBackend::Embedded => {
            let s = &config.state;
            let cfg = EmbeddedConfig {
                path: s.path.clone(),
                ttl_secs: s.ttl.as_secs().max(1),
                fsync: match s.fsync {
                    ConfigFsync::Batch => FsyncPolicy::Batch,
                    ConfigFsync::Off => FsyncPolicy::None,
                },
                max_batch: s.batch_max.get(),
                max_batch_delay_us: s.batch_delay.as_micros() as u64,
                op_timeout_ms: s.op_timeout.as_millis() as u64,
                ..EmbeddedConfig::default()
            };
            let store = EmbeddedStore::open(cfg).map_err(|e| ServeError::State(e.to_string()))?;
            // Weak: the probe must not keep the store (and its writer) alive past shutdown.
            let probe = Arc::downgrade(&store);
            let _ = metrics.state_probe.set(Box::new(move || {
                probe.upgrade().map_or((0, 0, 0), |s| {
                    let (batches, ops) = s.batch_stats();
                    (s.queue_len() as u64, batches, ops)
                })
            }));
            Ok(store)
        }
        StateBackend::Memory => {
            let s = &config.state;
            let store = crate::state::MemoryStore::new(crate::state::MemoryConfig {
                ttl_secs: s.ttl.as_secs().max(1),
                max_records: s.memory_max_records,
            })
            .map_err(|e| ServeError::State(e.to_string()))?;
            // Loud on purpose: someone may have copied a benchmark config into production.
            warn!(
                max_records = s.memory_max_records,
                "state backend \"memory\" is NOT DURABLE: every message record, receipt \
                 correlation and idempotency key is lost when this process stops; no crash \
                 recovery. For benchmarks and tests only"
            );
            Ok(store)
        }
        StateBackend::Aerospike => {
            let store = crate::state::aerospike::AerospikeStore::connect_blocking(
                config.state.aerospike.clone(),
                side.clone(),
            )
            .map_err(|e| ServeError::State(e.to_string()))?;
            Ok(store)
        }
    }
}
