//! The monoio bind driver against a tiny SMSC written here with the codec, on 127.0.0.1:0.
//!
//! Every wait is bounded; a hang fails the test instead of stalling CI.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use smsgw::smpp::io::{
    BindConfig, BindEvents, BindHandle, BindMode, BindState, Inbound, PartOutcome, SubmitError,
    reconnect_delay, spawn_bind,
};
use smsgw::smpp::pdu::{self, BindResp, Body, Pdu, SubmitSm, SubmitSmResp, status};

/// How the fake SMSC behaves; tests flip these while it runs.
#[derive(Default, Clone)]
struct Behaviour {
    refuse_bind: bool,
    /// Answer submit_sm at all (false: leave them outstanding).
    answer_submits: bool,
    /// On the next submit_sm: close the connection without answering (once).
    drop_on_next_submit: bool,
    /// After each submit_sm_resp, send a deliver_sm receipt for it.
    send_receipts: bool,
    /// Delay before each submit_sm_resp.
    resp_delay: Duration,
    /// Ignore enquire_link (a hung SMSC whose TCP connection stays open).
    ignore_enquire_link: bool,
    /// Answer this many submit_sm with ESME_RTHROTTLED first.
    throttle_first: usize,
}

#[derive(Default)]
struct Log {
    accepts: Vec<Instant>,
    binds: usize,
    submits: Vec<String>,
    deliver_resps: Vec<(u32, u32)>,
    enquire_links: usize,
    unbinds: usize,
}

#[derive(Clone, Default)]
struct Smsc {
    behaviour: Rc<RefCell<Behaviour>>,
    log: Rc<RefCell<Log>>,
}

impl Smsc {
    fn start(behaviour: Behaviour) -> (Smsc, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let smsc = Smsc {
            behaviour: Rc::new(RefCell::new(behaviour)),
            log: Rc::default(),
        };
        let s = smsc.clone();
        monoio::spawn(async move {
            let mut next_msg = 1u32;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.log.borrow_mut().accepts.push(Instant::now());
                let s = s.clone();
                let base = next_msg;
                next_msg += 1_000_000;
                monoio::spawn(async move { s.serve(stream, base).await });
            }
        });
        (smsc, port)
    }

    async fn serve(self, mut stream: TcpStream, mut next_id: u32) {
        let mut acc: Vec<u8> = Vec::new();
        let mut buf = Vec::with_capacity(4096);
        let mut deliver_seq = 10_000u32;
        loop {
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return,
                Ok(n) => acc.extend_from_slice(&buf[..n]),
            }
            buf.clear();
            let mut out = Vec::new();
            let mut used = 0;
            let mut hang_up = false;
            while let Ok(Some((p, n))) = pdu::decode(&acc[used..], 1 << 16) {
                used += n;
                let seq = p.sequence_number;
                let reply = |status, body| Pdu {
                    command_status: status,
                    sequence_number: seq,
                    body,
                };
                let b = self.behaviour.borrow().clone();
                match p.body {
                    Body::BindTransceiver(_) | Body::BindTransmitter(_) | Body::BindReceiver(_) => {
                        self.log.borrow_mut().binds += 1;
                        let st = if b.refuse_bind {
                            status::ESME_RINVPASWD
                        } else {
                            0
                        };
                        let body = BindResp {
                            system_id: "fake".try_into().unwrap(),
                            ..Default::default()
                        };
                        pdu::encode(&reply(st, Body::BindTransceiverResp(body)), &mut out).unwrap();
                    }
                    Body::SubmitSm(sm) => {
                        let name = String::from_utf8_lossy(&sm.short_message).into_owned();
                        self.log.borrow_mut().submits.push(name);
                        if b.drop_on_next_submit {
                            self.behaviour.borrow_mut().drop_on_next_submit = false;
                            hang_up = true;
                            break;
                        }
                        if !b.answer_submits {
                            continue;
                        }
                        if b.throttle_first > 0 {
                            self.behaviour.borrow_mut().throttle_first -= 1;
                            let body = Body::SubmitSmResp(SubmitSmResp::default());
                            pdu::encode(&reply(status::ESME_RTHROTTLED, body), &mut out).unwrap();
                            continue;
                        }
                        if !b.resp_delay.is_zero() {
                            monoio::time::sleep(b.resp_delay).await;
                        }
                        let id = format!("{next_id:X}");
                        next_id += 1;
                        let body = Body::SubmitSmResp(SubmitSmResp {
                            message_id: id.as_str().try_into().unwrap(),
                        });
                        pdu::encode(&reply(0, body), &mut out).unwrap();
                        if b.send_receipts {
                            let text = format!("id:{id} sub:001 dlvrd:001 stat:DELIVRD err:000");
                            deliver_seq += 1;
                            let receipt = Pdu {
                                command_status: 0,
                                sequence_number: deliver_seq,
                                body: Body::DeliverSm(SubmitSm {
                                    esm_class: 0x04,
                                    short_message: text.into_bytes(),
                                    ..Default::default()
                                }),
                            };
                            pdu::encode(&receipt, &mut out).unwrap();
                        }
                    }
                    Body::DeliverSmResp(_) => {
                        self.log
                            .borrow_mut()
                            .deliver_resps
                            .push((seq, p.command_status));
                    }
                    Body::EnquireLink => {
                        self.log.borrow_mut().enquire_links += 1;
                        if b.ignore_enquire_link {
                            continue;
                        }
                        pdu::encode(&reply(0, Body::EnquireLinkResp), &mut out).unwrap();
                    }
                    Body::Unbind => {
                        self.log.borrow_mut().unbinds += 1;
                        pdu::encode(&reply(0, Body::UnbindResp), &mut out).unwrap();
                    }
                    _ => {}
                }
            }
            acc.drain(..used);
            if !out.is_empty() {
                let (res, _) = stream.write_all(out).await;
                if res.is_err() {
                    return;
                }
            }
            if hang_up {
                return; // dropping the stream closes the connection
            }
        }
    }
}

fn config(port: u16) -> BindConfig {
    let mut c = BindConfig::new("127.0.0.1", port, "esme", "pw");
    c.link_id = 7;
    c.bind_index = 1;
    c.bind_mode = BindMode::Transceiver;
    c.window = 4;
    c.max_pending = 8;
    c.resp_timeout = Duration::from_secs(2);
    c.enquire_interval = Duration::from_secs(30);
    c.connect_timeout = Duration::from_secs(1);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(400);
    c.drain_timeout = Duration::from_secs(1);
    c
}

fn sm(name: &str) -> SubmitSm {
    SubmitSm {
        destination_addr: "491701234567".try_into().unwrap(),
        registered_delivery: 1,
        short_message: name.as_bytes().to_vec(),
        ..Default::default()
    }
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn bound(h: &BindHandle) {
    wait_until("bound", Duration::from_secs(5), || {
        matches!(h.state(), BindState::Bound { .. })
    })
    .await;
}

fn channel() -> (BindEvents, async_channel::Receiver<Inbound>) {
    let (tx, rx) = async_channel::bounded(64);
    (BindEvents { inbound: tx }, rx)
}

async fn next_deliver(
    rx: &async_channel::Receiver<Inbound>,
) -> (SubmitSm, smsgw::smpp::io::DeliverAck) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = monoio::time::timeout(left, rx.recv())
            .await
            .expect("deliver in time")
            .expect("channel open");
        if let Inbound::Deliver {
            link_id,
            bind_index,
            pdu,
            ack,
        } = msg
        {
            assert_eq!((link_id, bind_index), (7, 1));
            return (pdu, ack);
        }
    }
}

#[monoio::test(timer_enabled = true)]
async fn bind_submit_receipt_acked_only_after_consumer_says_so() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        send_receipts: true,
        ..Default::default()
    });
    let (events, rx) = channel();
    let h = spawn_bind(config(port), events);
    bound(&h).await;

    let out = h.submit(vec![sm("part1"), sm("part2")]).await.unwrap();
    assert_eq!(
        out,
        vec![
            PartOutcome::Accepted {
                message_id: "1".into()
            },
            PartOutcome::Accepted {
                message_id: "2".into()
            }
        ]
    );
    assert_eq!(smsc.log.borrow().submits, ["part1", "part2"]);

    let (r1, ack1) = next_deliver(&rx).await;
    assert!(String::from_utf8_lossy(&r1.short_message).starts_with("id:1 "));
    let (_r2, ack2) = next_deliver(&rx).await;
    // Not acknowledged until the consumer says the receipt is stored.
    monoio::time::sleep(Duration::from_millis(50)).await;
    assert!(smsc.log.borrow().deliver_resps.is_empty());
    ack1.ack(0);
    // A consumer that drops its ack gets a temporary error sent, so the SMSC re-sends.
    drop(ack2);
    wait_until("deliver_sm_resp", Duration::from_secs(2), || {
        smsc.log.borrow().deliver_resps.len() == 2
    })
    .await;
    assert_eq!(
        smsc.log.borrow().deliver_resps,
        [(10_001, 0), (10_002, status::ESME_RX_T_APPN)]
    );

    h.shutdown().await;
    assert_eq!(h.state(), BindState::Closed);
    assert_eq!(smsc.log.borrow().unbinds, 1);
    assert_eq!(h.submit(vec![sm("late")]).await, Err(SubmitError::Closed));
}

#[monoio::test(timer_enabled = true)]
async fn enquire_link_keeps_alive_and_reports_health() {
    let (smsc, port) = Smsc::start(Behaviour::default());
    let mut c = config(port);
    c.enquire_interval = Duration::from_millis(50);
    let (events, _rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    // (The first enquire_link goes out right after the bind, so the health signal may
    // already be set here.)
    wait_until("three enquire_links", Duration::from_secs(3), || {
        smsc.log.borrow().enquire_links >= 3
    })
    .await;
    wait_until("health signal", Duration::from_secs(1), || {
        h.last_enquire_ok().is_some()
    })
    .await;
    assert!(matches!(h.state(), BindState::Bound { .. }));
    h.shutdown().await;
}

#[monoio::test(timer_enabled = true)]
async fn server_disconnect_makes_outstanding_unknown_queued_not_sent_and_reconnects() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        drop_on_next_submit: true,
        ..Default::default()
    });
    let mut c = config(port);
    c.window = 1;
    let (events, rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    let first_bound = Instant::now();

    let h2 = h.clone();
    let other = monoio::spawn(async move { h2.submit(vec![sm("queued")]).await });
    let out = h.submit(vec![sm("lost")]).await.unwrap();
    assert_eq!(
        out,
        vec![PartOutcome::Unknown],
        "written, then the SMSC hung up"
    );
    let other = other.await;
    // "queued" may have been admitted behind "lost" (NotSent) or found the bind already down.
    match other {
        Ok(v) => assert_eq!(v, vec![PartOutcome::NotSent]),
        Err(e) => assert_eq!(e, SubmitError::NotBound),
    }
    assert!(!smsc.log.borrow().submits.contains(&"queued".to_string()));

    bound(&h).await;
    let accepts = smsc.log.borrow().accepts.clone();
    assert_eq!(accepts.len(), 2);
    let gap = accepts[1] - accepts[0];
    assert!(
        gap >= Duration::from_millis(25),
        "reconnect after jittered back-off, got {gap:?}"
    );
    assert!(first_bound.elapsed() < Duration::from_secs(3));
    // State changes were reported for the health monitor.
    let mut states = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Inbound::State { state, .. } = m {
            states.push(state);
        }
    }
    assert!(states.iter().any(|s| matches!(s, BindState::Down { .. })));
    assert!(matches!(states.last(), Some(BindState::Bound { .. })));

    let out = h.submit(vec![sm("after")]).await.unwrap();
    assert!(matches!(out[0], PartOutcome::Accepted { .. }));
    h.shutdown().await;
}

#[monoio::test(timer_enabled = true)]
async fn bind_refusal_retries_with_capped_growing_backoff() {
    let (smsc, port) = Smsc::start(Behaviour {
        refuse_bind: true,
        ..Default::default()
    });
    let (events, _rx) = channel();
    let h = spawn_bind(config(port), events); // 50 ms .. 400 ms
    assert_eq!(h.submit(vec![sm("x")]).await, Err(SubmitError::NotBound));
    monoio::time::sleep(Duration::from_millis(2000)).await;
    let accepts = smsc.log.borrow().accepts.clone();
    assert_eq!(smsc.log.borrow().binds, accepts.len());
    // Without back-off this would be thousands; with it: 50,100,200,400,400.. (each ×[0.5,1]).
    assert!(
        (4..=16).contains(&accepts.len()),
        "attempts in 2 s: {}",
        accepts.len()
    );
    let gaps: Vec<Duration> = accepts.windows(2).map(|w| w[1] - w[0]).collect();
    for g in &gaps {
        assert!(*g >= Duration::from_millis(25), "gap below min/2: {g:?}");
        // Cap 400 ms, plus scheduling slack for a loaded CI box.
        assert!(*g <= Duration::from_millis(1000), "gap above cap: {g:?}");
    }
    assert!(
        gaps.last().unwrap() >= &Duration::from_millis(150),
        "back-off grew: {gaps:?}"
    );
    assert!(matches!(
        h.state(),
        BindState::Down { .. } | BindState::Connecting
    ));
    h.shutdown().await;
    assert_eq!(h.state(), BindState::Closed);
}

#[monoio::test(timer_enabled = true)]
async fn graceful_shutdown_drains_outstanding_before_unbind() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        resp_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let (events, _rx) = channel();
    let h = spawn_bind(config(port), events);
    bound(&h).await;
    let h2 = h.clone();
    let pending = monoio::spawn(async move { h2.submit(vec![sm("a")]).await });
    monoio::time::sleep(Duration::from_millis(20)).await;
    h.shutdown().await;
    let out = pending.await.unwrap();
    assert!(matches!(out[0], PartOutcome::Accepted { .. }), "{out:?}");
    assert_eq!(smsc.log.borrow().unbinds, 1);
}

#[monoio::test(timer_enabled = true)]
async fn queue_full_is_refused_whole() {
    let (_smsc, port) = Smsc::start(Behaviour::default()); // never answers submits
    let mut c = config(port);
    c.window = 1;
    c.max_pending = 2;
    let (events, _rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    let h2 = h.clone();
    let _first = monoio::spawn(async move { h2.submit(vec![sm("1"), sm("2")]).await });
    monoio::time::sleep(Duration::from_millis(20)).await;
    // One in the window, one queued: three more parts do not fit; none may be taken.
    assert_eq!(
        h.submit(vec![sm("3"), sm("4"), sm("5")]).await,
        Err(SubmitError::QueueFull)
    );
}

#[test]
fn reconnect_delay_is_jittered_and_capped() {
    let mut rng = fastrand::Rng::with_seed(7);
    let min = Duration::from_millis(100);
    let max = Duration::from_secs(2);
    for attempt in 0..40 {
        let full = (min * 2u32.pow(attempt.min(10))).min(max);
        for _ in 0..50 {
            let d = reconnect_delay(min, max, attempt, &mut rng);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}

#[monoio::test(timer_enabled = true)]
async fn late_response_is_reported_with_the_callers_tag() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        resp_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let mut c = config(port);
    c.resp_timeout = Duration::from_millis(100);
    let (events, rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    let out = h.submit_tagged(99, vec![sm("slow")]).await.unwrap();
    assert_eq!(out, vec![PartOutcome::Unknown]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let late = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, rx.recv()).await {
            Ok(Ok(Inbound::LateResponse {
                tag,
                part,
                status,
                message_id,
                ..
            })) => break (tag, part, status, message_id),
            Ok(Ok(_)) => continue,
            other => panic!("no late response: {:?}", other.is_ok()),
        }
    };
    assert_eq!(late, (99, 0, 0, "1".to_string()));
    assert_eq!(smsc.log.borrow().submits, ["slow"], "never sent twice");
    assert_eq!(h.session_stats().unwrap().late_responses, 1);
    h.shutdown().await;
}

#[monoio::test(timer_enabled = true)]
async fn hung_smsc_is_detected_by_enquire_link_and_reconnected() {
    let (smsc, port) = Smsc::start(Behaviour {
        ignore_enquire_link: true,
        ..Default::default()
    });
    let mut c = config(port);
    c.enquire_interval = Duration::from_millis(50);
    c.resp_timeout = Duration::from_millis(100);
    let (events, _rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    let t0 = Instant::now();
    wait_until("second connection", Duration::from_secs(3), || {
        smsc.log.borrow().accepts.len() >= 2
    })
    .await;
    // 50 ms idle + 100 ms without enquire_link_resp + back-off of at most 50 ms (+ slack).
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(h.last_enquire_ok(), None);
    h.shutdown().await;
}

/// Throughput through the whole driver on loopback (SMSC in the same thread, so this is a
/// floor). Ignored by default; run:
/// `cargo test --release --test smpp_session_io -- --ignored --nocapture throughput`.
#[monoio::test(timer_enabled = true)]
#[ignore]
async fn throughput_over_loopback() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        ..Default::default()
    });
    let mut c = config(port);
    c.window = 256;
    c.max_pending = 4096;
    let (events, _rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    const TASKS: usize = 512;
    const PER_TASK: usize = 200;
    let start = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..TASKS {
        let h = h.clone();
        joins.push(monoio::spawn(async move {
            let mut ok = 0;
            for _ in 0..PER_TASK {
                if let Ok(v) = h.submit(vec![sm("load")]).await
                    && matches!(v[0], PartOutcome::Accepted { .. })
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for j in joins {
        ok += j.await;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(ok, TASKS * PER_TASK);
    assert_eq!(smsc.log.borrow().submits.len(), TASKS * PER_TASK);
    println!(
        "{} submits accepted in {:.3} s: {:.0} msg/s (ESME and SMSC on one core)",
        ok,
        secs,
        ok as f64 / secs
    );
    h.shutdown().await;
}

#[monoio::test(timer_enabled = true)]
async fn throttled_parts_are_retried_in_order_and_keep_their_identity() {
    let (smsc, port) = Smsc::start(Behaviour {
        answer_submits: true,
        throttle_first: 3,
        ..Default::default()
    });
    let mut c = config(port);
    c.throttle_backoff = Duration::from_millis(30);
    let (events, _rx) = channel();
    let h = spawn_bind(c, events);
    bound(&h).await;
    let t0 = Instant::now();
    let out = h.submit(vec![sm("p1"), sm("p2"), sm("p3")]).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "waited out the back-off"
    );
    // All three were throttled once and re-sent in their original order.
    assert_eq!(
        smsc.log.borrow().submits,
        ["p1", "p2", "p3", "p1", "p2", "p3"]
    );
    let ids: Vec<_> = out
        .iter()
        .map(|o| match o {
            PartOutcome::Accepted { message_id } => message_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        ["1", "2", "3"],
        "each part got the id of its own answer"
    );
    h.shutdown().await;
}
