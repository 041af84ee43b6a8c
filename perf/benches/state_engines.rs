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
    for round in 1..=rounds {
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
