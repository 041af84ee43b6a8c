//! Metrics micro-benchmarks: what one message costs in the shard slots (the counters and
//! histogram a successful REST send touches), and one scrape (sum of every shard's slots +
//! encoding through the `prometheus-client` collector) for a large deployment shape.
//! Run: `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::metrics::{Gauges, Metrics, render};

fn per_message(c: &mut Criterion) {
    let m = Metrics::new(4, vec![1, 2, 3]);
    let slots = m.shard(1);
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    // accepted + parts + submitted + two histogram observations + the HTTP route/status slot.
    g.bench_function("per_message_slots", |b| {
        let mut ns = 300_000u64;
        b.iter(|| {
            ns = ns.wrapping_mul(6364136223846793005).wrapping_add(1) % 50_000_000;
            slots.accepted.inc();
            slots.parts_submitted.inc();
            slots.submitted.inc();
            slots
                .submit_resp
                .observe(Duration::from_nanos(black_box(ns)));
            slots
                .send_duration
                .observe(Duration::from_nanos(black_box(ns + 1000)));
            slots.http_request(black_box("/api/v1/sms/send"), black_box(200));
        })
    });
    g.finish();
}

fn scrape(c: &mut Criterion) {
    // 16 shards, 64 links, every labelled series non-zero: a large page.
    let m = Arc::new(Metrics::new(16, (0..64).collect()));
    for s in 0..16 {
        let sh = m.shard(s);
        sh.accepted.add(1000);
        sh.rejected("rate_limited");
        sh.http_request("/api/v1/sms/send", 200);
        sh.grpc_request("SendMessage", "OK");
        sh.send_duration.observe(Duration::from_millis(3));
        for l in sh.links.iter() {
            l.binds.set(1);
            l.binds_up.set(1);
            l.outstanding.set(5);
            l.window.set(10);
            l.throttled.add(1);
        }
    }
    let gauges = Gauges::default();
    let bytes = render(&m, &gauges).len();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("scrape_16_shards_64_links", |b| {
        b.iter(|| black_box(render(&m, &gauges)))
    });
    g.finish();
}

criterion_group!(benches, per_message, scrape);
criterion_main!(benches);
