//! State store throughput: create + handed mark + submitted + receipt per message through the
//! embedded backend's batched writer, with fsync `none` and `batch`; plus the record codec
//! against serde_json, and the inline read (`get`) cost.
//!
//! Run: `cargo bench --bench state` (env: `STATE_BENCH_N` messages per policy, default 30000;
//! `STATE_BENCH_CLIENTS` client threads, default 2; `STATE_BENCH_INFLIGHT` concurrent messages
//! per client, default 64). Every loop is bounded in count and by a 60 s deadline.

use std::time::{Duration, Instant};

use smsgw::state::codec;
use smsgw::state::{
    EmbeddedConfig, EmbeddedStore, FsyncPolicy, MessageKey, MessageRecord, PartUpdate, StateStore,
    unix_ms,
};

// Same allocator as the `smsgw` binary: the writer is allocation-heavy, glibc malloc skews it.
#[path = "store_load.rs"]
mod store_load;
use store_load::{env_usize, record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// create, handed, submitted, receipt: the writes of a message that waited for window room (the
/// pipeline's slow path; with room at acceptance the mark rides on `create`: 3 writes).
const WRITES_PER_MESSAGE: f64 = 4.0;

struct RunResult {
    msgs: usize,
    failed: usize,
    elapsed: Duration,
    mean_batch: f64,
}

fn run_policy(
    fsync: FsyncPolicy,
    cache_records: usize,
    n: usize,
    clients: usize,
    inflight: usize,
) -> RunResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EmbeddedConfig {
        path: dir.path().join("state"),
        fsync,
        cache_records,
        ..EmbeddedConfig::default()
    };
    let store = EmbeddedStore::open(cfg).expect("open store");
    let (msgs, failed, elapsed) = store_load::drive(&store, n, clients, inflight, true);
    let (batches, ops) = store.batch_stats();
    RunResult {
        msgs,
        failed,
        elapsed,
        mean_batch: ops as f64 / batches.max(1) as f64,
    }
}

fn bench_codec() {
    let mut r = record(7, 42);
    r.expires_at_ms = unix_ms() + 86_400_000;
    r.apply(
        &PartUpdate::Submitted {
            index: 0,
            link_id: 3,
            smsc_message_id: "0a1b2c3d".into(),
        },
        unix_ms(),
    );
    let key = r.key();
    let iters = 200_000;

    let t = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..iters {
        let v = codec::encode_record(std::hint::black_box(&r));
        bytes = v.len();
        let back = codec::decode_record(&key, &v).expect("decode");
        std::hint::black_box(back);
    }
    let bin_ns = t.elapsed().as_nanos() as f64 / iters as f64;

    let t = Instant::now();
    let mut json_bytes = 0usize;
    for _ in 0..iters {
        let v = serde_json::to_vec(std::hint::black_box(&r)).expect("json");
        json_bytes = v.len();
        let back: MessageRecord = serde_json::from_slice(&v).expect("json decode");
        std::hint::black_box(back);
    }
    let json_ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!(
        "codec (1-part submitted record): binary {bin_ns:.0} ns enc+dec, {bytes} B | serde_json {json_ns:.0} ns enc+dec, {json_bytes} B"
    );
}

fn bench_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(EmbeddedConfig {
        path: dir.path().join("state"),
        ..EmbeddedConfig::default()
    })
    .expect("open");
    let n = 10_000;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio");
    rt.block_on(async {
        for i in 0..n {
            store.create(record(1, i)).await.expect("create");
        }
        let t = Instant::now();
        for i in 0..n {
            let got = store
                .get(MessageKey::new(1, format!("bench-{i:012}")))
                .await
                .expect("get");
            std::hint::black_box(got);
        }
        let hit = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for i in 0..n {
            let got = store
                .get(MessageKey::new(2, format!("bench-{i:012}")))
                .await
                .expect("get");
            std::hint::black_box(got);
        }
        let miss = t.elapsed().as_nanos() as f64 / n as f64;
        println!("inline get (memtable-resident, {n} records): hit {hit:.0} ns, miss {miss:.0} ns");
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_usize("STATE_BENCH_N", if quick { 2_000 } else { 30_000 });
    let clients = env_usize("STATE_BENCH_CLIENTS", 2).max(1);
    let inflight = env_usize("STATE_BENCH_INFLIGHT", 64).max(1);
    println!(
        "state bench: {n} messages x (create + handed + submitted + receipt), {clients} client threads x {inflight} in flight"
    );
    // `STATE_BENCH_SKIP_MICRO=1`: only the store runs (clean per-message instruction counts).
    if std::env::var_os("STATE_BENCH_SKIP_MICRO").is_none() {
        bench_codec();
        bench_reads();
    }
    // The writer's record cache on (default) and off, alternating, so the ratio is measured
    // in one run on the same machine state. `STATE_BENCH_CACHE=N` runs only that cache size,
    // `STATE_BENCH_FSYNC=none|batch` only that policy (one configuration per process, e.g.
    // for callgrind instruction counts).
    let cache_default = EmbeddedConfig::default().cache_records;
    let caches = match std::env::var("STATE_BENCH_CACHE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(c) => vec![c],
        None => vec![0, cache_default, 0, cache_default],
    };
    let policies = match std::env::var("STATE_BENCH_FSYNC").as_deref() {
        Ok("none") => vec![FsyncPolicy::None],
        Ok("batch") => vec![FsyncPolicy::Batch],
        _ => vec![FsyncPolicy::None, FsyncPolicy::Batch],
    };
    for fsync in policies {
        for &cache in &caches {
            let r = run_policy(fsync, cache, n, clients, inflight);
            report(fsync, cache, &r);
        }
    }
}

fn report(fsync: FsyncPolicy, cache: usize, r: &RunResult) {
    let secs = r.elapsed.as_secs_f64();
    println!(
        "fsync={fsync:?} writer-cache={cache}: {} msgs in {secs:.2} s = {:.0} msgs/s ({:.0} writes/s), failed {}, mean batch {:.1} ops",
        r.msgs,
        r.msgs as f64 / secs,
        WRITES_PER_MESSAGE * r.msgs as f64 / secs,
        r.failed,
        r.mean_batch,
    );
}
