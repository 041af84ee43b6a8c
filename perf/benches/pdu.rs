//! SMPP PDU codec micro-benchmarks (PERF.md target: ≤ 100 ns each for submit_sm encode and
//! decode). Run: `cargo bench --bench pdu -- --warm-up-time 1 --measurement-time 3`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::smpp::pdu::{
    Body, COctet, DEFAULT_MAX_PDU_LEN, Pdu, SubmitSm, Tlvs, decode, encode, encoded_len, tag,
};
use std::hint::black_box;

// The allocator the gateway runs with (src/main.rs): decode's two allocations (short_message,
// TLV region) are part of what we measure.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A typical gateway submit: alphanumeric sender, international number, 160 GSM7 septets
/// (unpacked, one per octet), receipt requested.
fn submit_sm() -> Pdu {
    Pdu {
        command_status: 0,
        sequence_number: 0x1234,
        body: Body::SubmitSm(SubmitSm {
            source_addr_ton: 5,
            source_addr: COctet::new(b"AcmeBank").unwrap(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: COctet::new(b"447700900123").unwrap(),
            registered_delivery: 1,
            short_message: vec![b'x'; 160],
            ..Default::default()
        }),
    }
}

/// A delivery receipt as SMSCs send it: esm_class 0x04, the text form and the TLVs
/// receipted_message_id + message_state.
fn deliver_sm_receipt() -> Pdu {
    let mut tlvs = Tlvs::new();
    tlvs.push(tag::RECEIPTED_MESSAGE_ID, b"0A1B2C3D4E5F\0")
        .unwrap();
    tlvs.push_u8(tag::MESSAGE_STATE, 2);
    Pdu {
        command_status: 0,
        sequence_number: 0x77,
        body: Body::DeliverSm(SubmitSm {
            source_addr_ton: 1,
            source_addr_npi: 1,
            source_addr: COctet::new(b"447700900123").unwrap(),
            destination_addr: COctet::new(b"AcmeBank").unwrap(),
            esm_class: 0x04,
            short_message: b"id:0A1B2C3D4E5F sub:001 dlvrd:001 submit date:2611252359 \
done date:2611260001 stat:DELIVRD err:000 text:Your code is 1234"
                .to_vec(),
            tlvs,
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu");
    g.throughput(Throughput::Elements(1));

    let sm = submit_sm();
    let mut out = Vec::with_capacity(encoded_len(&sm));
    g.bench_function("submit_sm_encode", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&sm), &mut out).unwrap();
            black_box(out.len())
        })
    });

    let mut wire = Vec::new();
    encode(&sm, &mut wire).unwrap();
    g.bench_function("submit_sm_decode", |b| {
        b.iter(|| {
            decode(black_box(&wire), DEFAULT_MAX_PDU_LEN)
                .unwrap()
                .unwrap()
        })
    });

    let dlr = deliver_sm_receipt();
    let mut wire = Vec::new();
    encode(&dlr, &mut wire).unwrap();
    g.bench_function("deliver_sm_receipt_decode", |b| {
        b.iter(|| {
            decode(black_box(&wire), DEFAULT_MAX_PDU_LEN)
                .unwrap()
                .unwrap()
        })
    });

    let resp = Pdu {
        command_status: 0,
        sequence_number: 0x1234,
        body: Body::SubmitSmResp(smsgw::smpp::pdu::SubmitSmResp {
            message_id: COctet::new(b"0A1B2C3D4E5F").unwrap(),
        }),
    };
    let mut wire = Vec::new();
    encode(&resp, &mut wire).unwrap();
    g.bench_function("submit_sm_resp_decode", |b| {
        b.iter(|| {
            decode(black_box(&wire), DEFAULT_MAX_PDU_LEN)
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
