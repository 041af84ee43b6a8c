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

use std::sync::Arc;
use std::time::{Duration, Instant};

use smsgw::state::{
    CreateOutcome, EmbeddedConfig, EmbeddedStore, Encoding, FsyncPolicy, MessageKey, MessageRecord,
    PartUpdate, ReceiptInfo, ReceiptOutcome, StateStore, Status, UpdateOutcome, unix_ms,
};

// Same allocator as the `smsgw` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn one_message(s: &dyn StateStore, app: u64, i: usize, mark: bool) -> bool {
    let r = MessageRecord::new_accepted(
        MessageKey::new(app, format!("bench-{i:012}")),
        1,
        "SmsGw",
        "+4512345678",
        Encoding::Gsm7,
        "Your verification code is 123456. It expires in 10 minutes.",
        1,
        unix_ms(),
    );
    let key = r.key();
    if !matches!(s.create(r).await, Ok(CreateOutcome::Created(_))) {
        return false;
    }
    if mark
        && !matches!(
            s.update(key.clone(), vec![PartUpdate::Handed], unix_ms())
                .await,
            Ok(UpdateOutcome::Updated { changed: true, .. })
        )
    {
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
        return false;
    }
    let rc = ReceiptInfo {
        status: Status::Delivered,
        stat: "DELIVRD".into(),
        err: None,
        done_at_ms: None,
        received_at_ms: unix_ms(),
    };
    matches!(
        s.apply_receipt(1, smsc_id, rc).await,
        Ok(ReceiptOutcome::Applied(_))
    )
}

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
    let deadline = Instant::now() + Duration::from_secs(60);
    let per_client = n / CLIENTS;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let store: Arc<dyn StateStore> = store.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..inflight)
                        .map(|t| {
                            let store = store.clone();
                            monoio::spawn(async move {
                                let (mut done, mut failed) = (0usize, 0usize);
                                let mut i = t;
                                while i < per_client && Instant::now() < deadline {
                                    if one_message(&*store, c as u64, i, mark).await {
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
    (msgs as f64 / t0.elapsed().as_secs_f64(), failed)
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
