//! Blacklist at 10M numbers: build size and lookup time (PERF.md: ≤ 128 MiB, ≤ 200 ns).
//!
//! `cargo bench --bench policy` — prints the set's heap size and the process RSS growth while
//! building, then criterion lookups of present and absent numbers in random order (so the
//! caches do not help more than they would in production).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use smsgw::policy::blacklist::Blacklist;

const N: usize = 10_000_000;
/// Lookups cycle over this many random numbers: 1M distinct buckets, far more than the
/// caches hold, so the time includes the memory misses a real lookup pays.
const PROBES: usize = 1 << 20;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn blacklist(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(42);
    // Realistic-looking E.164 keys: 11 to 13 digits.
    let keys: Vec<u64> = (0..N)
        .map(|_| rng.u64(10_000_000_000..10_000_000_000_000))
        .collect();
    let probes_hit: Vec<u64> = (0..PROBES).map(|_| keys[rng.usize(0..N)]).collect();
    let probes_miss: Vec<u64> = (0..PROBES)
        .map(|_| rng.u64(10_000_000_000..10_000_000_000_000))
        .collect();
    let before = rss_kib();
    let set = Blacklist::from_keys(keys);
    let after = rss_kib();
    println!(
        "blacklist: {} numbers, heap {:.1} MiB ({:.2} B/number), RSS after build {:.1} MiB (+{:.1} MiB while building incl. the input)",
        set.len(),
        set.heap_bytes() as f64 / 1048576.0,
        set.heap_bytes() as f64 / set.len() as f64,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
    let mut g = c.benchmark_group("blacklist_10m");
    let mut i = 0usize;
    g.bench_function("contains_hit", |b| {
        b.iter(|| {
            i = (i + 1) & (PROBES - 1);
            black_box(set.contains(black_box(probes_hit[i])))
        })
    });
    g.bench_function("contains_miss", |b| {
        b.iter(|| {
            i = (i + 1) & (PROBES - 1);
            black_box(set.contains(black_box(probes_miss[i])))
        })
    });
    g.finish();
}

criterion_group!(benches, blacklist);
criterion_main!(benches);
