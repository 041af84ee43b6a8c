//! State store throughput: create + handed mark + submitted + receipt per message through the
//! embedded backend's batched writer, with fsync `none` and `batch`; plus the record codec
//! against serde_json, and the inline read (`get`) cost.
//!
//! Run: `cargo bench --bench state` (env: `STATE_BENCH_N` messages per policy, default 30000;
//! `STATE_BENCH_CLIENTS` client threads, default 2; `STATE_BENCH_INFLIGHT` concurrent messages
//! per client, default 64). Every loop is bounded in count and by a 60 s deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smsgw::state::codec;
use smsgw::state::{
    CreateOutcome, EmbeddedConfig, EmbeddedStore, Encoding, FsyncPolicy, MessageKey, MessageRecord,
    PartUpdate, ReceiptInfo, ReceiptOutcome, StateStore, Status, UpdateOutcome, unix_ms,
};

// Same allocator as the `smsgw` binary: the writer is allocation-heavy, glibc malloc skews it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// create, handed, submitted, receipt: the gateway's writes per delivered message.
const WRITES_PER_MESSAGE: f64 = 4.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record(app: u64, i: usize) -> MessageRecord {
    MessageRecord::new_accepted(
        MessageKey::new(app, format!("bench-{i:012}")),
        1,
        "SmsGw",
        "+4512345678",
        Encoding::Gsm7,
        "Your verification code is 123456. It expires in 10 minutes.",
        1,
        unix_ms(),
    )
}

/// One message's life: create, submitted, delivered. Returns false on any unexpected outcome.
async fn one_message(s: &dyn StateStore, app: u64, i: usize) -> bool {
    let r = record(app, i);
    let key = r.key();
    match s.create(r).await {
        Ok(CreateOutcome::Created(_)) => {}
        other => {
            eprintln!("create: {other:?}");
            return false;
        }
    }
    // The hand-over mark, written before the submit like the gateway's pipeline does.
    let handed = s
        .update(key.clone(), vec![PartUpdate::Handed], unix_ms())
        .await;
    if !matches!(handed, Ok(UpdateOutcome::Updated { changed: true, .. })) {
        eprintln!("handed: {handed:?}");
        return false;
    }
    let smsc_id = format!("{app:x}-{i:x}");
    let up = s
        .update(
            key,
            vec![PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: smsc_id.clone(),
            }],
            unix_ms(),
        )
        .await;
    if !matches!(up, Ok(UpdateOutcome::Updated { changed: true, .. })) {
        eprintln!("update: {up:?}");
        return false;
    }
    let rc = ReceiptInfo {
        status: Status::Delivered,
        stat: "DELIVRD".into(),
        err: Some("000".into()),
        done_at_ms: Some(unix_ms()),
        received_at_ms: unix_ms(),
    };
    match s.apply_receipt(1, smsc_id, rc).await {
        Ok(ReceiptOutcome::Applied(_)) => true,
        other => {
            eprintln!("receipt: {other:?}");
            false
        }
    }
}

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
    let deadline = Instant::now() + Duration::from_secs(60);
    let per_client = n / clients;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let store: Arc<dyn StateStore> = store.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio");
                rt.block_on(async move {
                    // `inflight` tasks each take every inflight-th message of this client.
                    let tasks: Vec<_> = (0..inflight)
                        .map(|t| {
                            let store = store.clone();
                            monoio::spawn(async move {
                                let (mut done, mut failed) = (0usize, 0usize);
                                let mut i = t;
                                while i < per_client && Instant::now() < deadline {
                                    if one_message(&*store, c as u64, i).await {
                                        done += 1;
                                    } else {
                                        failed += 1;
                                    }
                                    i += inflight;
                                }
                                (done, failed)
                            })
                        })
                        .collect();
                    let (mut done, mut failed) = (0, 0);
                    for t in tasks {
                        let (d, f) = t.await;
                        done += d;
                        failed += f;
                    }
                    (done, failed)
                })
            })
        })
        .collect();
    let (mut msgs, mut failed) = (0, 0);
    for h in handles {
        let (d, f) = h.join().expect("client thread");
        msgs += d;
        failed += f;
    }
    let elapsed = t0.elapsed();
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
