//! `smsgw smsc-sim`: an SMPP v3.4 SMSC simulator for tests and benchmarks.
//!
//! An independent server-side implementation (it shares only the PDU codec with the gateway,
//! never the ESME session code), so tests against it are not a mirror of our own
//! assumptions. It binds ESMEs (optionally checking credentials), answers submit_sm /
//! data_sm with unique message ids, sends delivery receipts after a delay, and injects faults
//! on demand (flags at start, `POST /faults` while running). See `docs/smsc-sim.md`.
//!
//! Layout: one monoio event loop per thread, each with its own SO_REUSEPORT listener
//! (`receipt::CoreCtx` is that thread's world); `shared::Shared` holds what threads and the
//! control API share; `conn` is one session; `control` the HTTP control API.

mod config;
mod conn;
mod control;
mod receipt;
mod shared;
mod util;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::{
    Behaviour, DlrFormat, DlrRoute, DlrState, FaultsPatch, IdFormat, MalformedKind, SimArgs,
};
use receipt::CoreCtx;
use shared::Shared;

/// Most event-loop threads (one per core on any machine we run on).
const MAX_CORES: usize = 256;
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator setting: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the event loop: {0}")]
    Runtime(std::io::Error),
    #[error("event-loop thread ended before it was ready")]
    ThreadDied,
}

/// A running simulator. Dropping it stops it (sessions are closed without unbind).
pub struct SimHandle {
    smpp_addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The SMPP listen address (with the OS-chosen port when asked for port 0).
    pub fn smpp_addr(&self) -> SocketAddr {
        self.smpp_addr
    }

    /// The control API address, when enabled.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Blocks until the simulator stops (it only stops through `stop` or the process ending).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops the event loops and the control API and waits for their threads.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.disconnect_all(None);
        for w in &self.shared.core_wake {
            w.notify();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(addr) = self.control_addr {
            // Unblocks the control thread's accept; it then sees the shutdown flag.
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts the simulator on background threads and returns once every listener is bound.
pub fn start(args: SimArgs) -> Result<SimHandle, SimError> {
    let behaviour = args.initial_behaviour()?;
    if args.max_pdu_len < 16 {
        return Err(SimError::Config("max-pdu-len must be at least 16".into()));
    }
    let cores = match args.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(MAX_CORES);
    let pin_ids = if args.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let control_port = args.control_port;
    let shared = Arc::new(Shared::new(args, behaviour, cores));

    let mut threads = Vec::with_capacity(cores);
    let mut addr = shared.args.listen;
    // Thread 0 binds first so that with port 0 the others join the port it got.
    for core in 0..cores {
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        let pin = (!pin_ids.is_empty()).then(|| pin_ids[core % pin_ids.len()]);
        let t = std::thread::Builder::new()
            .name(format!("smsc-sim-{core}"))
            .spawn(move || core_main(sh, core, addr, pin, tx))
            .map_err(SimError::Runtime)?;
        let ready = rx.recv().map_err(|_| SimError::ThreadDied);
        threads.push(t);
        match ready {
            Ok(Ok(a)) => addr = a,
            Ok(Err(e)) | Err(e) => {
                shared.shutdown.store(true, Ordering::Release);
                for w in &shared.core_wake {
                    w.notify();
                }
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }

    let (control_addr, control) = match control_port {
        None => (None, None),
        Some(port) => {
            let bind = SocketAddr::from(([127, 0, 0, 1], port));
            let l = std::net::TcpListener::bind(bind)
                .map_err(|source| SimError::Listen { addr: bind, source })?;
            let a = l.local_addr().map_err(SimError::Runtime)?;
            let sh = shared.clone();
            let t = std::thread::Builder::new()
                .name("smsc-sim-control".into())
                .spawn(move || control::serve(l, sh))
                .map_err(SimError::Runtime)?;
            (Some(a), Some(t))
        }
    };

    Ok(SimHandle {
        smpp_addr: addr,
        control_addr,
        shared,
        threads,
        control,
    })
}

fn core_main(
    shared: Arc<Shared>,
    core: usize,
    addr: SocketAddr,
    pin: Option<core_affinity::CoreId>,
    ready: mpsc::Sender<Result<SocketAddr, SimError>>,
) {
    if let Some(id) = pin {
        core_affinity::set_for_current(id);
    }
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(SimError::Runtime(e)));
            return;
        }
    };
    rt.block_on(async move {
        let opts = monoio::net::ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(1024);
        let listener = match monoio::net::TcpListener::bind_with_config(addr, &opts)
            .and_then(|l| l.local_addr().map(|a| (l, a)))
        {
            Ok((l, a)) => {
                let _ = ready.send(Ok(a));
                l
            }
            Err(source) => {
                let _ = ready.send(Err(SimError::Listen { addr, source }));
                return;
            }
        };
        let ctx = Rc::new(CoreCtx::new(shared.clone(), core));
        monoio::spawn(receipt::run_scheduler(ctx.clone()));
        loop {
            if shared.is_shutdown() {
                return;
            }
            monoio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let open = shared.open_conns.fetch_add(1, Ordering::AcqRel);
                        if open >= shared.args.max_sessions {
                            shared.open_conns.fetch_sub(1, Ordering::AcqRel);
                            shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                        } else {
                            shared.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
                            monoio::spawn(conn::serve(ctx.clone(), stream));
                        }
                    }
                    Err(_) => monoio::time::sleep(ACCEPT_BACKOFF).await,
                },
                _ = shared.core_wake[core].wait() => {}
            }
        }
    });
}

/// Entry point of `smsgw smsc-sim`: starts, prints the bound addresses, runs until killed.
pub fn run(args: SimArgs) -> Result<(), SimError> {
    let h = start(args)?;
    let control = h
        .control_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // One line on stdout so scripts and tests that start the binary with port 0 learn the
    // ports.
    println!(
        "smsc-sim listening smpp={} control={control}",
        h.smpp_addr()
    );
    h.wait();
    Ok(())
}
