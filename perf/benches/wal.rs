//! Write-ahead log (`state::wal`) cost per op, off mode (durable = written to the OS), 100-byte
//! payloads:
//!
//! * `append`: framing into the calling thread's lane buffer alone (no I/O).
//! * `append+durable/deferred`: batches of 64 futures the way a monoio shard turn drives them
//!   (first future defers itself to the end of the turn, the other 63 park, the deferred one
//!   writes the batch with one write(2) and wakes them), polled by hand: no runtime cost.
//! * `append+durable/self-wake`: the same through the fallback path tokio uses (each future
//!   wakes itself once; the first re-poll writes the batch).
//! * `append+durable/monoio`: 64 monoio tasks per batch, each `append` + `.await`, with the
//!   real deferral: includes spawning and scheduling the tasks (an upper bound).
//!
//! Every few thousand ops the segments are rotated and removed (untimed), so the disk use
//! stays bounded. Run: `cargo bench --bench wal -- --quick`.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::state::wal::{self, DurableFuture, Pos, Wal, WalConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 64;
const PAYLOAD: [u8; 100] = [0x5a; 100];
/// Rotate and delete the segments after this many ops (untimed).
const ROTATE_EVERY: u64 = 100_000;

fn open(dir: &tempfile::TempDir) -> Arc<Wal> {
    Wal::open(WalConfig::new(dir.path().to_path_buf(), false)).expect("open wal")
}

/// Untimed housekeeping: rotate and delete every sealed segment.
fn trim(wal: &Wal) {
    let sealed = wal.rotate().expect("rotate");
    wal.remove_sealed(&sealed).expect("remove");
}

fn poll(f: &mut DurableFuture, cx: &mut Context<'_>) -> Poll<Result<(), smsgw::state::StateError>> {
    Pin::new(f).poll(cx)
}

/// Hand-driven deferral: the deferred waker is simply dropped; the bench re-polls the driver.
fn drop_deferral(w: Waker) {
    drop(w);
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(&dir);
    let mut g = c.benchmark_group("wal");

    g.throughput(Throughput::Elements(1));
    g.bench_function("append", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(4096);
                let t = Instant::now();
                let mut last = Pos::default();
                for _ in 0..n {
                    last = wal.append(black_box(&PAYLOAD)).expect("append");
                }
                spent += t.elapsed();
                done += n;
                // Untimed: write the buffer out so it never fills.
                futures::executor::block_on(wal.durable(last)).expect("durable");
                if done % ROTATE_EVERY < n {
                    trim(&wal);
                }
            }
            spent
        });
    });

    g.throughput(Throughput::Elements(BATCH as u64));
    let noop = Waker::noop();
    for (name, deferral) in [
        ("append+durable/deferred", Some(drop_deferral as fn(Waker))),
        ("append+durable/self-wake", None),
    ] {
        wal::set_thread_turn_deferrer(deferral);
        let writes0 = wal.writes_for_test();
        let mut batches = 0u64;
        g.bench_function(name, |b| {
            let mut cx = Context::from_waker(noop);
            let mut futs: Vec<DurableFuture> = Vec::with_capacity(BATCH);
            b.iter(|| {
                for _ in 0..BATCH {
                    let pos = wal.append(black_box(&PAYLOAD)).expect("append");
                    futs.push(wal.durable(pos));
                }
                // First polls: deferral (or self-wake) of the first, parking of the rest.
                for f in &mut futs {
                    assert!(poll(f, &mut cx).is_pending());
                }
                // The end of the turn: every future resolves; the first poll writes.
                for f in &mut futs {
                    assert!(matches!(poll(f, &mut cx), Poll::Ready(Ok(()))));
                }
                futs.clear();
                batches += 1;
                if batches.is_multiple_of(ROTATE_EVERY / BATCH as u64) {
                    trim(&wal);
                }
            });
        });
        let writes = wal.writes_for_test() - writes0;
        println!("{name}: {writes} writes for {batches} batches of {BATCH}");
    }
    wal::set_thread_turn_deferrer(None);

    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime");
    let writes0 = wal.writes_for_test();
    let mut batches = 0u64;
    g.bench_function("append+durable/monoio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                wal::set_thread_turn_deferrer(Some(wal::monoio_turn_deferrer));
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let tasks: Vec<_> = (0..BATCH)
                        .map(|_| {
                            let wal = wal.clone();
                            monoio::spawn(async move {
                                let pos = wal.append(black_box(&PAYLOAD))?;
                                wal.durable(pos).await
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("durable");
                    }
                    spent += t.elapsed();
                    batches += 1;
                    if batches.is_multiple_of(ROTATE_EVERY / BATCH as u64) {
                        trim(&wal);
                    }
                }
                wal::set_thread_turn_deferrer(None);
                spent
            })
        });
    });
    let writes = wal.writes_for_test() - writes0;
    println!("append+durable/monoio: {writes} writes for {batches} batches of {BATCH}");
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
