//! CDR writer cost per record: NDJSON encoding and the batch's gzip at a few levels, on a
//! batch of realistic one-part delivered CDRs (the bench's own data, distinct ids/numbers).
//! Prints the compressed size of each level once (bytes per record).
//! Run: `cargo bench --bench cdr -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::Write as _;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::cdr::CdrRecord;
use smsgw::state::model::{Encoding, MessageKey, MessageRecord, ReceiptInfo, Status};

const N: usize = 2_000;

fn record(i: usize) -> CdrRecord {
    let created = 1_795_668_941_900 + i as u64 * 7;
    let mut m = MessageRecord::new_accepted(
        MessageKey::new(1, format!("b1a216359575-{i}")),
        500,
        "SMSGW",
        format!("7900{:07}", (i * 7919) % 10_000_000),
        if i.is_multiple_of(5) {
            Encoding::Ucs2
        } else {
            Encoding::Gsm7
        },
        "text",
        1,
        created,
    );
    m.status = Status::Delivered;
    m.link_id = Some(100);
    m.updated_at_ms = created + 101;
    for p in &mut m.parts {
        p.status = Status::Delivered;
        p.link_id = Some(100);
        p.smsc_message_id = Some(format!("{}", 144_020 + i * 3));
        p.submitted_at_ms = Some(created + 2);
        p.receipt = Some(ReceiptInfo {
            status: Status::Delivered,
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            done_at_ms: Some(created + 90),
            received_at_ms: created + 100,
        });
    }
    m.text = None;
    CdrRecord::from_message(&m, "vm", created + 101).expect("final record")
}

fn ndjson(recs: &[CdrRecord]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in recs {
        buf.extend_from_slice(&serde_json::to_vec(r).unwrap());
        buf.push(b'\n');
    }
    buf
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::new(level),
    );
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bench(c: &mut Criterion) {
    let recs: Vec<CdrRecord> = (0..N).map(record).collect();
    let raw = ndjson(&recs);
    let mut g = c.benchmark_group("cdr");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("encode_ndjson", |b| b.iter(|| ndjson(black_box(&recs))));
    for level in [1, 3, 6] {
        let size = gzip(&raw, level).len();
        println!(
            "gzip level {level}: {:.1} B/record (raw {:.1} B/record)",
            size as f64 / N as f64,
            raw.len() as f64 / N as f64
        );
        g.bench_function(format!("gzip_level_{level}"), |b| {
            b.iter(|| gzip(black_box(&raw), level))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
