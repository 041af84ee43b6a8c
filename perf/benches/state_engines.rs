//! What the durable state engines cost against the non-durable memory store, store alone:
//! one message = create + submitted + delivered receipt (3 writes: the pipeline with window room,
//! where the hand-over mark rides on create), driven by
//! monoio client threads as the shards drive it. Configurations alternate twice in one run so
//! the ratios are measured on the same machine state.
//!
//! Run: `cargo bench --bench state_engines` (env: `STATE_BENCH_N` messages per configuration,
//! default 60000; `STATE_BENCH_CLIENTS` client threads, default 2; `STATE_BENCH_INFLIGHT`
//! concurrent messages per client, default 128; `STATE_BENCH_CONFIGS` a comma-separated subset
//! of the configurations, e.g. `memory,journal-off` for a profile; `STATE_BENCH_ROUNDS`, default
//! 2). Every loop is bounded in count and by a 60 s
//! deadline per configuration.
//!
//! `journal-ckpt` (only when named in `STATE_BENCH_CONFIGS`) measures one journal checkpoint
//! instead: the same messages with background checkpoints held off, then one checkpoint of
//! them all (as cold in cache as the gateway's), timed by the CPU of the thread running it.
//!
//! `journal-scan` (likewise) stores the messages, stops the store cleanly, opens it again and
//! times the key filter's start-up scan of the cold store (until `key_filter_ready`).

use std::time::Duration;

use smsgw::state::journal::{JournalConfig, JournalStore};
use smsgw::state::{EmbeddedConfig, EmbeddedStore, FsyncPolicy, MemoryConfig, MemoryStore};

#[path = "store_load.rs"]
mod store_load;
use store_load::env_usize;

// Same allocator as the `smsgw` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of this process so far (all threads), from /proc: what a configuration costs, not
/// only how long it took.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // Linux reports in USER_HZ, 100 on every platform we run on.
    Duration::from_millis(ticks * 10)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// `journal-ckpt`: drives `n` messages with no checkpoint, then prints the CPU of one
/// checkpoint of them all, per record.
fn checkpoint_cost(
    round: usize,
    path: std::path::PathBuf,
    n: usize,
    clients: usize,
    inflight: usize,
) {
    let s = JournalStore::open(JournalConfig {
        path,
        checkpoint_interval_ms: 3_600_000,
        checkpoint_bytes: u64::MAX / 2,
        ..JournalConfig::default()
    })
    .expect("journal");
    let (msgs, failed, _) = store_load::drive(&s, n, clients, inflight, false);
    let cpu0 = thread_cpu();
    let t0 = std::time::Instant::now();
    let records = s.checkpoint_now().expect("checkpoint");
    let cpu = thread_cpu().saturating_sub(cpu0);
    println!(
        "round {round}  journal-ckpt: {msgs} msgs ({failed} failed), one checkpoint of {records} records in {:.0} ms, CPU {:.2} µs/record (checkpointing thread)",
        t0.elapsed().as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / records.max(1) as f64,
    );
}

/// `journal-scan`: stores `n` messages, reopens the store, prints how long the key filter's
/// scan of them took.
fn scan_cost(round: usize, path: std::path::PathBuf, n: usize, clients: usize, inflight: usize) {
    let cfg = || JournalConfig {
        path: path.clone(),
        sync: false,
        ..JournalConfig::default()
    };
    {
        let s = JournalStore::open(cfg()).expect("journal");
        store_load::drive(&s, n, clients, inflight, false);
    } // clean stop: all checkpointed
    let t0 = std::time::Instant::now();
    let s = JournalStore::open(cfg()).expect("reopen");
    let opened = t0.elapsed();
    let deadline = t0 + Duration::from_secs(120);
    while !s.stats().key_filter_ready && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (ready, took) = (s.stats().key_filter_ready, t0.elapsed());
    println!(
        "round {round}  journal-scan: {n} msgs stored; reopen {:.0} ms, key filter {} after {:.0} ms ({:.2} µs/record)",
        opened.as_secs_f64() * 1e3,
        if ready { "ready" } else { "NOT ready" },
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / n.max(1) as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_usize("STATE_BENCH_N", if quick { 2_000 } else { 60_000 });
    let clients = env_usize("STATE_BENCH_CLIENTS", 2).max(1);
    let inflight = env_usize("STATE_BENCH_INFLIGHT", 128).max(1);
    println!(
        "state engines: {n} messages x (create+mark, submitted, receipt), {clients} client threads x {inflight} in flight"
    );
    let all = [
        "memory",
        "journal-off",
        "writer-off",
        "journal-batch",
        "writer-batch",
    ];
    let only = std::env::var("STATE_BENCH_CONFIGS").unwrap_or_default();
    let configs: Vec<&str> = all
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| o.trim() == *c))
        .collect();
    let rounds = env_usize("STATE_BENCH_ROUNDS", 2).clamp(1, 20);
    let named = |c: &str| only.split(',').any(|o| o.trim() == c);
    let (ckpt, scan) = (named("journal-ckpt"), named("journal-scan"));
    for round in 1..=rounds {
        if ckpt {
            let dir = tempfile::tempdir().expect("tempdir");
            checkpoint_cost(round, dir.path().join("state"), n, clients, inflight);
        }
        if scan {
            let dir = tempfile::tempdir().expect("tempdir");
            scan_cost(round, dir.path().join("state"), n, clients, inflight);
        }
        for &name in &configs {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state");
            let cpu0 = process_cpu();
            let (msgs, failed, elapsed) = match name {
                "memory" => {
                    let s = MemoryStore::new(MemoryConfig::default()).expect("memory");
                    store_load::drive(&s, n, clients, inflight, false)
                }
                "journal-off" | "journal-batch" => {
                    let s = JournalStore::open(JournalConfig {
                        path,
                        sync: name == "journal-batch",
                        ..JournalConfig::default()
                    })
                    .expect("journal");
                    store_load::drive(&s, n, clients, inflight, false)
                }
                _ => {
                    let s = EmbeddedStore::open(EmbeddedConfig {
                        path,
                        fsync: if name == "writer-batch" {
                            FsyncPolicy::Batch
                        } else {
                            FsyncPolicy::None
                        },
                        ..EmbeddedConfig::default()
                    })
                    .expect("writer");
                    store_load::drive(&s, n, clients, inflight, false)
                }
            };
            let cpu = process_cpu().saturating_sub(cpu0);
            let secs = elapsed.as_secs_f64().max(1e-9);
            println!(
                "round {round} {name:>13}: {msgs} msgs in {secs:.2} s = {:>7.0} msgs/s, CPU {:.1} µs/msg (all threads), failed {failed}",
                msgs as f64 / secs,
                cpu.as_secs_f64() * 1e6 / msgs.max(1) as f64,
            );
        }
    }
}
