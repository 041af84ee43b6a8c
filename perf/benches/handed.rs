//! Cost of the hand-over mark (crash resubmission, `PartUpdate::Handed`): one message's store
//! life with and without the extra awaited write, through the embedded backend's batched
//! writer, fsync `none` and `batch`, A/B interleaved so that machine noise hits both alike.
//!
//! Per message: create → [handed] → submitted (with receipt index) → receipt. The pipeline
//! awaits each write in turn, as here.
//!
//! Run: `cargo bench --bench handed` (env: `HANDED_BENCH_N` messages per run, default 20000;
//! `HANDED_BENCH_INFLIGHT` concurrent messages per client thread, default 64, 2 client threads;
//! `HANDED_BENCH_ROUNDS` A/B pairs per policy, default 3). Every run is bounded by a 60 s
//! deadline.

use smsgw::state::{EmbeddedConfig, EmbeddedStore, FsyncPolicy};

#[path = "store_load.rs"]
mod store_load;
use store_load::env_usize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per second of one run, and how many failed.
fn run(fsync: FsyncPolicy, mark: bool, n: usize, inflight: usize) -> (f64, usize) {
    const CLIENTS: usize = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(EmbeddedConfig {
        path: dir.path().join("state"),
        fsync,
        ..EmbeddedConfig::default()
    })
    .expect("open store");
    let (msgs, failed, elapsed) = store_load::drive(&store, n, CLIENTS, inflight, mark);
    (msgs as f64 / elapsed.as_secs_f64(), failed)
}

fn main() {
    let n = env_usize("HANDED_BENCH_N", 20_000);
    let inflight = env_usize("HANDED_BENCH_INFLIGHT", 64);
    let rounds = env_usize("HANDED_BENCH_ROUNDS", 3);
    for (name, fsync) in [("none", FsyncPolicy::None), ("batch", FsyncPolicy::Batch)] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (a, fa) = run(fsync, false, n, inflight);
            let (b, fb) = run(fsync, true, n, inflight);
            assert_eq!(fa + fb, 0, "failed messages in the bench");
            without.push(a);
            with.push(b);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (med(&mut without), med(&mut with));
        println!(
            "fsync {name}: {n} msgs × {rounds} rounds, 2×{inflight} in flight: without mark {a:.0} msgs/s, with mark {b:.0} msgs/s (median), cost {:.1}% (runs without {:?}, with {:?})",
            (1.0 - b / a) * 100.0,
            without.iter().map(|x| x.round()).collect::<Vec<_>>(),
            with.iter().map(|x| x.round()).collect::<Vec<_>>(),
        );
    }
}
