//! Thread-per-core runtime: N shard threads, each a pinned monoio runtime (io_uring with an epoll
//! fallback), a small tokio side runtime for tokio-only clients, termination signals and the
//! shutdown signal every task listens to.
//!
//! Shards are built *inside* their thread from a `Send` factory, so everything a shard owns can be
//! `Rc`/`RefCell`: no locks on the hot path. The only things crossing threads are the values the
//! caller hands each shard at start (`Vec<T>`, e.g. its listener) and explicit bounded channels.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Which I/O driver monoio chose for a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    /// epoll; chosen when the kernel or a seccomp profile refuses io_uring, or when
    /// `MONOIO_FORCE_LEGACY_DRIVER=1` is set.
    Epoll,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("shard {shard}: cannot build the monoio runtime: {source}")]
    Build {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard}: cannot start the thread: {source}")]
    Spawn {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard} died during start")]
    DiedAtStart { shard: usize },
    #[error("cannot build the tokio side runtime: {0}")]
    Side(std::io::Error),
    #[error("signal mask: {0}")]
    Signals(std::io::Error),
}

/// Receiving side of the process-wide shutdown signal. Cheap to clone; `Send`, so it works on
/// every shard and on the side runtime.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: async_channel::Receiver<()>,
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (and immediately afterwards, forever).
    pub async fn wait(&self) {
        // Nothing is ever sent: the channel only closes, which wakes every waiter.
        let _ = self.rx.recv().await;
    }

    pub fn is_triggered(&self) -> bool {
        self.rx.is_closed()
    }
}

/// Sending side of the shutdown signal.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    tx: async_channel::Sender<()>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.close();
    }
}

pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = async_channel::bounded(1);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

/// What a shard knows about itself when its factory runs.
#[derive(Debug, Clone)]
pub struct ShardContext {
    pub id: usize,
    pub shard_count: usize,
    pub driver: Driver,
    pub shutdown: Shutdown,
}

#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub shard_count: usize,
    /// Pin shard i to core i (mod the number of cores).
    pub pin_cores: bool,
    /// io_uring submission queue size.
    pub ring_entries: u32,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            shard_count: default_shard_count(),
            pin_cores: true,
            ring_entries: 1024,
        }
    }
}

/// One shard per available core.
pub fn default_shard_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The running shard threads.
pub struct Shards {
    handles: Vec<JoinHandle<()>>,
    pub drivers: Vec<Driver>,
}

impl Shards {
    /// Waits for every shard thread to finish, at most until `deadline`. Returns false if some
    /// shard was still running then (the caller decides whether to exit anyway).
    pub fn join_until(self, deadline: Instant) -> bool {
        loop {
            if self.handles.iter().all(|h| h.is_finished()) {
                for h in self.handles {
                    if h.join().is_err() {
                        warn!("a shard thread panicked");
                    }
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Starts `opts.shard_count` shard threads. Shard i receives `inits[i]` and runs
/// `factory(ctx, inits[i])` to completion on its own runtime. Returns once every shard has built
/// its runtime (so a failure to build is an error here, not a log line in a thread).
pub fn start_shards<T, F, Fut>(
    opts: &ShardOptions,
    shutdown: Shutdown,
    inits: Vec<T>,
    factory: F,
) -> Result<Shards, RuntimeError>
where
    T: Send + 'static,
    F: Fn(ShardContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    assert_eq!(inits.len(), opts.shard_count, "one init value per shard");
    let factory = Arc::new(factory);
    let cores = if opts.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<Driver, std::io::Error>)>();
    let mut handles = Vec::with_capacity(opts.shard_count);
    for (id, init) in inits.into_iter().enumerate() {
        let factory = Arc::clone(&factory);
        let shutdown = shutdown.clone();
        let ready_tx = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let shard_count = opts.shard_count;
        let entries = opts.ring_entries;
        let handle = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let pinned = core.is_some_and(core_affinity::set_for_current);
                let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .with_entries(entries)
                    .build();
                let mut rt = match built {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send((id, Err(e)));
                        return;
                    }
                };
                let driver = match &rt {
                    monoio::FusionRuntime::Uring(_) => Driver::IoUring,
                    monoio::FusionRuntime::Legacy(_) => Driver::Epoll,
                };
                info!(
                    shard = id,
                    driver = driver.as_str(),
                    core = core.map(|c| c.id as i64).unwrap_or(-1),
                    pinned,
                    "shard runtime started"
                );
                let _ = ready_tx.send((id, Ok(driver)));
                drop(ready_tx);
                // The journal state engine's log writes batch per event-loop turn only with
                // this hook on monoio threads (monoio re-polls a self-woken task at once).
                crate::state::wal::set_thread_turn_deferrer(Some(
                    crate::state::wal::monoio_turn_deferrer,
                ));
                let ctx = ShardContext {
                    id,
                    shard_count,
                    driver,
                    shutdown,
                };
                rt.block_on(factory(ctx, init));
                info!(shard = id, "shard stopped");
            })
            .map_err(|source| RuntimeError::Spawn { shard: id, source })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut drivers = vec![Driver::Epoll; opts.shard_count];
    for _ in 0..opts.shard_count {
        match ready_rx.recv() {
            Ok((id, Ok(d))) => drivers[id] = d,
            Ok((shard, Err(source))) => return Err(RuntimeError::Build { shard, source }),
            Err(_) => return Err(RuntimeError::DiedAtStart { shard: 0 }),
        }
    }
    Ok(Shards { handles, drivers })
}

/// The tokio runtime for clients that assume tokio (Redis, S3, gRPC, fsync-heavy work).
/// Bounded to at most 2 workers: it must not compete with the shards for cores.
pub fn side_runtime(workers: usize) -> Result<tokio::runtime::Runtime, RuntimeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 2))
        .thread_name("side")
        .enable_all()
        .build()
        .map_err(RuntimeError::Side)
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`; inherited
/// by every thread, checked by the kernel at each page fault).
///
/// Why: the allocator returns freed memory to the kernel after a delay and faults it back in
/// later; with huge pages each such fault zeroes 2 MiB instead of 4 KiB. With the journal
/// state engine (which frees and reallocates more than the rest of the gateway: checkpoint
/// batches, evicted records) `clear_page_erms` under huge-page faults was 7.9% of the
/// shards' CPU; with THP off the journal (fsync `off`) went from 22.1-23.0k to 25.2-25.6k
/// msg/s at max and the in-memory backend did not change (perf/RESULTS.md, 2026-11-26).
/// The same reason databases such as Redis advise against THP.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Blocks SIGTERM and SIGINT for the calling thread and every thread it starts afterwards, so
/// that `wait_for_termination` can take them synchronously. Call first thing in `main`, before
/// any thread exists.
pub fn block_termination_signals() -> Result<TerminationSignals, RuntimeError> {
    // SAFETY: sigset_t is plain data; the libc calls only read/write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(RuntimeError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(TerminationSignals { set })
    }
}

/// The blocked signal set; see `block_termination_signals`.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

impl TerminationSignals {
    /// Blocks the calling thread until SIGTERM or SIGINT arrives; returns its name.
    pub fn wait(&self) -> &'static str {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and blocked; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc == 0 {
                return if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
            }
        }
    }

    /// Starts a thread that waits for a termination signal and then triggers `trigger`.
    /// A second signal while shutting down exits at once (the operator insists).
    pub fn spawn_watcher(self, trigger: ShutdownTrigger) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let name = self.wait();
                info!(signal = name, "termination signal: shutting down");
                trigger.trigger();
                let name = self.wait();
                warn!(signal = name, "second termination signal: exiting now");
                std::process::exit(130);
            })
    }
}

/// Binds `count` listeners on `addr` with SO_REUSEPORT so the kernel spreads connections across
/// shards. Port 0 is resolved by the first bind and reused by the rest. Done on the main thread
/// so "address in use" is a start-up error, not a log line in a shard.
pub fn bind_reuseport(
    addr: std::net::SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    // SO_REUSEPORT would let us silently join another process's listener group on the same
    // port (the kernel would then split connections between two gateways). A plain bind first
    // fails with "address in use" if anything listens there.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_port(true)?;
        sock.set_reuse_address(true)?;
        // The epoll driver needs non-blocking sockets; io_uring does not care.
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        let std_listener: std::net::TcpListener = sock.into();
        addr = std_listener.local_addr()?;
        out.push(std_listener);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_group_refuses_a_port_another_listener_holds() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(
            first[1].local_addr().unwrap(),
            addr,
            "port 0 resolved once for the group"
        );
        let err = bind_reuseport(addr, 1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(first);
        assert!(
            bind_reuseport(addr, 2).is_ok(),
            "free again once the first group is gone"
        );
    }

    #[test]
    fn shards_run_their_factory_and_stop_on_shutdown() {
        let (trigger, shutdown) = shutdown_pair();
        let (tx, rx) = std::sync::mpsc::channel();
        let opts = ShardOptions {
            shard_count: 2,
            pin_cores: false,
            ring_entries: 64,
        };
        let shards = start_shards(&opts, shutdown, vec![10u32, 20u32], move |ctx, init| {
            let tx = tx.clone();
            async move {
                // Per-shard state is !Send: that is the point of building it in the thread.
                let local = std::rc::Rc::new(init + ctx.id as u32);
                tx.send(*local).unwrap();
                ctx.shutdown.wait().await;
            }
        })
        .unwrap();
        assert_eq!(shards.drivers.len(), 2);
        let mut got = [rx.recv().unwrap(), rx.recv().unwrap()];
        got.sort();
        assert_eq!(got, [10, 21]);
        trigger.trigger();
        assert!(shards.join_until(Instant::now() + Duration::from_secs(5)));
    }
}
