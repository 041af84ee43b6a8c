//! Text encoding, segmentation and receipt parsing micro-benchmarks (PERF.md: GSM7/UCS2
//! encode + segmentation of 160/500/1600-character texts; deliver_sm receipt parse).
//! Run: `cargo bench --bench text -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::num::NonZeroU8;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smsgw::smpp::pdu::{SubmitSm, tag};
use smsgw::smpp::receipt::{self, IdFormat};
use smsgw::smpp::segment::{RefAllocator, SegmentConfig, SegmentMode, segment};
use smsgw::smpp::text::{Encoding, check_text_len};

/// A GSM7 text of `n` characters: mostly ASCII with a few extension chars (2 septets each)
/// and default-table non-ASCII letters, like a real promotional message.
fn gsm7_text(n: usize) -> String {
    "Hello Zoé, your order #1234 costs €25 [incl. tax]. Åland ~ Δ @home: "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

/// A UCS2 text of `n` characters: Cyrillic with an emoji (surrogate pair) now and then.
fn ucs2_text(n: usize) -> String {
    "Здравствуйте! Ваш заказ №1234 готов 😀 "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

fn bench_segment(c: &mut Criterion) {
    // 1600 UCS2 characters need 25 parts: allow the hard limit so every size segments.
    let cfg = SegmentConfig {
        mode: SegmentMode::Udh8,
        max_parts: NonZeroU8::new(255).unwrap(),
        ..SegmentConfig::default()
    };
    let mut refs = RefAllocator::for_mode(cfg.mode, 0x5eed);
    let mut group = c.benchmark_group("segment");
    for n in [160, 500, 1600] {
        for (name, text) in [("gsm7", gsm7_text(n)), ("ucs2", ucs2_text(n))] {
            // Guard against a sample text that silently falls back to another encoding.
            let info = check_text_len(&text, None, &cfg).unwrap();
            let want = if name == "gsm7" {
                Encoding::Gsm7
            } else {
                Encoding::Ucs2
            };
            assert_eq!(info.encoding, want, "{name} sample text");
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &text, |b, text| {
                b.iter(|| segment(black_box(text), None, &cfg, &mut refs, b"447700900123").unwrap())
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("check_text_len");
    for n in [160, 1600] {
        for (name, text) in [("gsm7", gsm7_text(n)), ("ucs2", ucs2_text(n))] {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &text, |b, text| {
                b.iter(|| check_text_len(black_box(text), None, &cfg).unwrap())
            });
        }
    }
    group.finish();
}

fn bench_receipt(c: &mut Criterion) {
    let text_only = SubmitSm {
        esm_class: 0x04,
        short_message: b"id:0123456789 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531 stat:DELIVRD err:000 text:Hello Zoe, your order"
            .to_vec(),
        ..SubmitSm::default()
    };
    let mut with_tlvs = text_only.clone();
    with_tlvs
        .tlvs
        .push_cstr(tag::RECEIPTED_MESSAGE_ID, b"0A1B2C3D4E5F")
        .unwrap();
    with_tlvs.tlvs.push_u8(tag::MESSAGE_STATE, 2);

    let mut group = c.benchmark_group("receipt");
    group.bench_function("parse_text_form", |b| {
        b.iter(|| receipt::parse(black_box(&text_only)).unwrap())
    });
    group.bench_function("parse_tlv_and_text", |b| {
        b.iter(|| receipt::parse(black_box(&with_tlvs)).unwrap())
    });
    group.bench_function("normalize_id_hex", |b| {
        b.iter(|| receipt::normalize_id(black_box("0A1B2C3D4E5F"), IdFormat::Hex))
    });
    group.finish();
}

criterion_group!(benches, bench_segment, bench_receipt);
criterion_main!(benches);
