//! SMPP session state machine cost per message (no I/O): one submit_sm queued and written,
//! its submit_sm_resp decoded and matched, the outcome event drained; and one deliver_sm
//! receipt handed out and answered. Run:
//! `cargo bench --bench session -- --warm-up-time 1 --measurement-time 3`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smsgw::smpp::pdu::{self, BindResp, Body, COctet, Pdu, SubmitSm, SubmitSmResp};
use smsgw::smpp::session::{BindMode, Event, Session, SessionConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

const BATCH: usize = 100;

fn submit() -> SubmitSm {
    SubmitSm {
        source_addr_ton: 5,
        source_addr: COctet::new(b"AcmeBank").unwrap(),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: COctet::new(b"447700900123").unwrap(),
        registered_delivery: 1,
        short_message: vec![b'x'; 160],
        ..Default::default()
    }
}

fn bound_session(now: Instant) -> Session {
    let mut cfg = SessionConfig::new(BindMode::Transceiver, "esme", "pw").unwrap();
    cfg.window = BATCH;
    cfg.max_pending = BATCH;
    cfg.enquire_interval = Duration::from_secs(3600);
    let mut s = Session::new(cfg, now);
    s.bind(now);
    let mut out = Vec::new();
    s.poll_transmit(&mut out);
    let (bind, _) = pdu::decode(&out, 1 << 16).unwrap().unwrap();
    let mut resp = Vec::new();
    pdu::encode(
        &Pdu {
            command_status: 0,
            sequence_number: bind.sequence_number,
            body: Body::BindTransceiverResp(BindResp::default()),
        },
        &mut resp,
    )
    .unwrap();
    s.handle_input(&resp, now);
    while s.poll_event().is_some() {}
    assert!(s.is_bound());
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("submit_resp_cycle_x100", |b| {
        let now = Instant::now();
        let mut s = bound_session(now);
        let mut wire = Vec::with_capacity(64 * 1024);
        let mut answers = Vec::with_capacity(64 * 1024);
        let mut token = 0u64;
        b.iter(|| {
            for _ in 0..BATCH {
                s.submit(token, submit(), now).unwrap();
                token += 1;
            }
            wire.clear();
            s.poll_transmit(&mut wire);
            // The SMSC side: answer every submit (the headers tell the sequence numbers).
            answers.clear();
            let mut at = 0;
            while at < wire.len() {
                let h = pdu::peek_header(&wire[at..]).unwrap();
                pdu::encode(
                    &Pdu {
                        command_status: 0,
                        sequence_number: h.sequence_number,
                        body: Body::SubmitSmResp(SubmitSmResp {
                            message_id: COctet::new(b"0A1B2C3D4E5F").unwrap(),
                        }),
                    },
                    &mut answers,
                )
                .unwrap();
                at += h.command_length as usize;
            }
            s.handle_input(&answers, now);
            let mut n = 0;
            while let Some(e) = s.poll_event() {
                if let Event::Outcome { .. } = e {
                    n += 1;
                }
            }
            assert_eq!(n, BATCH);
            black_box(&s);
        })
    });

    g.bench_function("deliver_and_ack_x100", |b| {
        let now = Instant::now();
        let mut s = bound_session(now);
        let mut delivers = Vec::new();
        for i in 0..BATCH as u32 {
            pdu::encode(
                &Pdu {
                    command_status: 0,
                    sequence_number: i + 1,
                    body: Body::DeliverSm(SubmitSm {
                        esm_class: 4,
                        short_message: b"id:0A1B2C3D4E5F sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 text:".to_vec(),
                        ..Default::default()
                    }),
                },
                &mut delivers,
            )
            .unwrap();
        }
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            s.handle_input(&delivers, now);
            while let Some(e) = s.poll_event() {
                if let Event::Deliver { seq, .. } = e {
                    s.respond_deliver(seq, 0).unwrap();
                }
            }
            out.clear();
            s.poll_transmit(&mut out);
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
