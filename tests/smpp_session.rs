//! Session state machine on virtual time, against a fake SMSC built from the codec.
//!
//! Time is a base `Instant` plus durations; nothing here sleeps or touches a socket.

use std::time::{Duration, Instant};

use smsgw::smpp::pdu::{
    self, BindResp, Body, DataSm, Pdu, SubmitSm, SubmitSmResp, Tlvs, command_id as cmd, status,
};
use smsgw::smpp::session::{
    BindMode, CloseReason, Event, MAX_SEQUENCE, Outcome, Session, SessionConfig, State, SubmitError,
};

const MS: Duration = Duration::from_millis(1);

/// The test is the SMSC: it reads what the session wrote and answers with encoded PDUs.
struct Smsc {
    s: Session,
    now: Instant,
    base: Instant,
}

impl Smsc {
    fn new(cfg: SessionConfig) -> Self {
        let base = Instant::now();
        Self {
            s: Session::new(cfg, base),
            now: base,
            base,
        }
    }

    /// Bound session with the handshake done and its events drained.
    fn bound(cfg: SessionConfig) -> Self {
        let mut h = Self::new(cfg);
        h.s.bind(h.now);
        let bind = h.take_one();
        h.feed(resp(
            &bind,
            0,
            Body::BindTransceiverResp(BindResp {
                system_id: "SMSC".try_into().unwrap(),
                tlvs: Tlvs::new(),
            }),
        ));
        assert!(h.s.is_bound());
        // The session probes the link right after binding; answer that probe here.
        let probe = h.take_one();
        assert_eq!(probe.body.command_id(), cmd::ENQUIRE_LINK);
        h.feed(resp(&probe, 0, Body::EnquireLinkResp));
        assert_eq!(
            h.events(),
            vec![
                Event::Bound {
                    system_id: "SMSC".into()
                },
                Event::EnquireOk { at: h.now }
            ]
        );
        h
    }

    /// Decodes everything the session wrote since the last call.
    fn sent(&mut self) -> Vec<Pdu> {
        let mut buf = Vec::new();
        self.s.poll_transmit(&mut buf);
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let (p, n) = pdu::decode(&buf[at..], 1 << 20)
                .expect("session wrote a valid PDU")
                .expect("session wrote whole PDUs");
            out.push(p);
            at += n;
        }
        out
    }

    fn take_one(&mut self) -> Pdu {
        let mut v = self.sent();
        assert_eq!(v.len(), 1, "expected exactly one PDU, got {v:?}");
        v.pop().unwrap()
    }

    fn feed(&mut self, p: Pdu) {
        let mut buf = Vec::new();
        pdu::encode(&p, &mut buf).unwrap();
        self.s.handle_input(&buf, self.now);
    }

    fn feed_raw(&mut self, bytes: &[u8]) {
        self.s.handle_input(bytes, self.now);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
    }

    /// Advances to the session's own next deadline (as the I/O driver would).
    fn advance_to_deadline(&mut self) -> Duration {
        let t = self.s.poll_timeout().expect("session has a deadline");
        assert!(t >= self.now, "deadline in the past");
        let d = t - self.now;
        self.now = t;
        self.s.handle_timeout(self.now);
        d
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn outcomes(&mut self) -> Vec<(u64, Outcome)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Outcome { token, outcome } => Some((token, outcome)),
                _ => None,
            })
            .collect()
    }

    fn elapsed(&self) -> Duration {
        self.now - self.base
    }
}

fn cfg() -> SessionConfig {
    let mut c = SessionConfig::new(BindMode::Transceiver, "esme", "secret").unwrap();
    c.window = 3;
    c.max_pending = 10;
    c.resp_timeout = Duration::from_secs(5);
    c.enquire_interval = Duration::from_secs(30);
    c.enquire_timeout = Duration::from_secs(5);
    c.throttle_backoff = Duration::from_millis(200);
    c.throttle_backoff_max = Duration::from_millis(1000);
    c.throttle_max_retries = 3;
    c
}

/// A submit whose short_message names it, so the SMSC side can tell parts apart.
fn sm(name: &str) -> SubmitSm {
    SubmitSm {
        destination_addr: "4915112345678".try_into().unwrap(),
        short_message: name.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn resp(req: &Pdu, status: u32, body: Body) -> Pdu {
    Pdu {
        command_status: status,
        sequence_number: req.sequence_number,
        body,
    }
}

fn submit_resp(req: &Pdu, status: u32) -> Pdu {
    let id = format!("id-{}", name_of(req));
    resp(
        req,
        status,
        Body::SubmitSmResp(SubmitSmResp {
            message_id: id.as_str().try_into().unwrap(),
        }),
    )
}

fn name_of(p: &Pdu) -> String {
    match &p.body {
        Body::SubmitSm(s) => String::from_utf8(s.short_message.clone()).unwrap(),
        other => panic!("not a submit_sm: {other:?}"),
    }
}

fn names(ps: &[Pdu]) -> Vec<String> {
    ps.iter().map(name_of).collect()
}

fn accepted(name: &str) -> Outcome {
    Outcome::Accepted {
        message_id: format!("id-{name}"),
    }
}

fn deliver(seq: u32) -> Pdu {
    Pdu {
        command_status: 0,
        sequence_number: seq,
        body: Body::DeliverSm(SubmitSm {
            esm_class: 0x04,
            short_message: b"id:1 stat:DELIVRD".to_vec(),
            ..Default::default()
        }),
    }
}

// ----- bind -----

#[test]
fn bind_modes_send_the_right_pdu_with_credentials() {
    for (mode, id) in [
        (BindMode::Transmitter, cmd::BIND_TRANSMITTER),
        (BindMode::Receiver, cmd::BIND_RECEIVER),
        (BindMode::Transceiver, cmd::BIND_TRANSCEIVER),
    ] {
        let mut c = cfg();
        c.bind_mode = mode;
        let mut h = Smsc::new(c);
        assert_eq!(h.s.state(), State::Open);
        h.s.bind(h.now);
        assert_eq!(h.s.state(), State::Binding);
        let b = h.take_one();
        assert_eq!(b.body.command_id(), id);
        match &b.body {
            Body::BindTransmitter(b) | Body::BindReceiver(b) | Body::BindTransceiver(b) => {
                assert_eq!(b.system_id.as_bytes(), b"esme");
                assert_eq!(b.password.as_bytes(), b"secret");
                assert_eq!(b.interface_version, 0x34);
            }
            _ => unreachable!(),
        }
        assert_ne!(b.sequence_number, 0);
        h.feed(resp(&b, 0, Body::BindReceiverResp(BindResp::default())));
        assert_eq!(h.s.state(), State::Bound(mode));
    }
}

#[test]
fn bind_rejected_reports_status_and_closes() {
    let mut h = Smsc::new(cfg());
    h.s.bind(h.now);
    let b = h.take_one();
    h.feed(resp(
        &b,
        status::ESME_RINVPASWD,
        Body::BindTransceiverResp(BindResp::default()),
    ));
    assert_eq!(
        h.events(),
        vec![
            Event::BindFailed {
                status: status::ESME_RINVPASWD
            },
            Event::Closed {
                reason: CloseReason::BindRejected {
                    status: status::ESME_RINVPASWD
                }
            }
        ]
    );
    assert!(h.s.is_closed());
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn bind_timeout_closes() {
    let mut c = cfg();
    c.bind_timeout = Duration::from_secs(2);
    let mut h = Smsc::new(c);
    h.s.bind(h.now);
    h.take_one();
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(2));
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            reason: CloseReason::BindTimeout
        }]
    );
}

#[test]
fn submits_before_bind_wait_and_go_out_once_bound() {
    let mut h = Smsc::new(cfg());
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.bind(h.now);
    let b = h.take_one();
    assert_eq!(
        b.body.command_id(),
        cmd::BIND_TRANSCEIVER,
        "no submit before bind_resp"
    );
    h.feed(resp(&b, 0, Body::BindTransceiverResp(BindResp::default())));
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[0].body.command_id(),
        cmd::ENQUIRE_LINK,
        "post-bind probe"
    );
    assert_eq!(names(&sent[1..]), ["a"]);
}

// ----- submit, window, queue -----

#[test]
fn submit_accepted_carries_token_and_message_id() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(42, sm("hello"), h.now).unwrap();
    let p = h.take_one();
    assert_eq!(p.body.command_id(), cmd::SUBMIT_SM);
    h.feed(submit_resp(&p, 0));
    assert_eq!(h.outcomes(), vec![(42, accepted("hello"))]);
}

#[test]
fn submit_rejected_carries_status() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(7, sm("x"), h.now).unwrap();
    let p = h.take_one();
    h.feed(submit_resp(&p, status::ESME_RINVDSTADR));
    assert_eq!(
        h.outcomes(),
        vec![(
            7,
            Outcome::Rejected {
                status: status::ESME_RINVDSTADR
            }
        )]
    );
}

#[test]
fn window_is_never_exceeded_and_queue_full_is_immediate() {
    let mut c = cfg();
    c.window = 3;
    c.max_pending = 4;
    let mut h = Smsc::bound(c);
    for i in 0..7u64 {
        h.s.submit(i, sm(&format!("m{i}")), h.now).unwrap();
    }
    // 3 in flight + 4 queued: the 8th is refused at once, nothing dropped silently.
    assert_eq!(
        h.s.submit(99, sm("over"), h.now),
        Err(SubmitError::QueueFull { max: 4 })
    );
    let mut in_flight = h.sent();
    assert_eq!(names(&in_flight), ["m0", "m1", "m2"]);
    let mut done = Vec::new();
    // Answer one at a time (not in order) and check the SMSC never sees more than 3 open.
    let mut seen = 3;
    while !in_flight.is_empty() {
        let p = in_flight.remove(in_flight.len() / 2);
        h.feed(submit_resp(&p, 0));
        let more = h.sent();
        seen += more.len();
        in_flight.extend(more);
        assert!(in_flight.len() <= 3, "window exceeded: {}", in_flight.len());
        assert!(h.s.outstanding_len() <= 3);
        done.extend(h.outcomes());
    }
    assert_eq!(seen, 7, "every submit written exactly once");
    done.sort_by_key(|(t, _)| *t);
    let expect: Vec<_> = (0..7u64).map(|i| (i, accepted(&format!("m{i}")))).collect();
    assert_eq!(done, expect);
}

#[test]
fn receiver_bind_refuses_submits() {
    let mut c = cfg();
    c.bind_mode = BindMode::Receiver;
    let mut h = Smsc::bound(c);
    assert_eq!(
        h.s.submit(1, sm("a"), h.now),
        Err(SubmitError::ReceiverBind)
    );
}

#[test]
fn oversized_submit_is_refused_by_max_pdu_len() {
    let mut c = cfg();
    c.max_pdu_len = 100;
    let mut h = Smsc::bound(c);
    let mut big = sm("x");
    big.short_message = vec![b'a'; 200];
    match h.s.submit(1, big, h.now) {
        Err(SubmitError::TooLarge { max: 100, len }) => assert!(len > 100),
        other => panic!("{other:?}"),
    }
    assert!(h.sent().is_empty());
}

// ----- sequence numbers -----

#[test]
fn sequence_numbers_wrap_and_are_never_zero() {
    let mut c = cfg();
    c.window = 10;
    c.initial_sequence = MAX_SEQUENCE - 3;
    let mut h = Smsc::bound(c); // the bind used MAX-3, the post-bind enquire_link MAX-2
    for i in 0..5u64 {
        h.s.submit(i, sm(&format!("m{i}")), h.now).unwrap();
    }
    let sent = h.sent();
    let seqs: Vec<u32> = sent.iter().map(|p| p.sequence_number).collect();
    assert_eq!(seqs, [MAX_SEQUENCE - 1, MAX_SEQUENCE, 1, 2, 3]);
    // Responses after the wrap still find their tokens.
    for p in sent.iter().rev() {
        h.feed(submit_resp(p, 0));
    }
    let mut got = h.outcomes();
    got.sort_by_key(|(t, _)| *t);
    let expect: Vec<_> = (0..5u64).map(|i| (i, accepted(&format!("m{i}")))).collect();
    assert_eq!(got, expect);
}

// ----- timeouts and late responses -----

#[test]
fn resp_timeout_reports_timed_out_and_never_resends() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(5, sm("slow"), h.now).unwrap();
    let p = h.take_one();
    h.advance(Duration::from_millis(4999));
    assert!(h.outcomes().is_empty());
    h.advance(MS);
    assert_eq!(h.outcomes(), vec![(5, Outcome::TimedOut)]);
    assert_eq!(
        h.s.outstanding_len(),
        0,
        "timed-out request frees its window slot"
    );
    // Much later: nothing but keep-alives is ever written again for it.
    for _ in 0..20 {
        h.advance(Duration::from_secs(10));
        for q in h.sent() {
            assert_eq!(q.body.command_id(), cmd::ENQUIRE_LINK, "unexpected {q:?}");
            h.feed(resp(&q, 0, Body::EnquireLinkResp));
        }
    }
    // The late answer is matched to the token and causes no send.
    h.feed(submit_resp(&p, 0));
    let ev: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| !matches!(e, Event::EnquireOk { .. }))
        .collect();
    assert_eq!(
        ev,
        vec![Event::LateResponse {
            token: 5,
            status: 0,
            message_id: "id-slow".into()
        }]
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.s.stats().submits_sent, 1);
}

#[test]
fn late_throttle_answer_does_not_resend() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(5, sm("slow"), h.now).unwrap();
    let p = h.take_one();
    h.advance(Duration::from_secs(6));
    assert_eq!(h.outcomes(), vec![(5, Outcome::TimedOut)]);
    h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
    assert!(matches!(
        h.events().as_slice(),
        [Event::LateResponse {
            token: 5,
            status: status::ESME_RTHROTTLED,
            ..
        }]
    ));
    h.advance(Duration::from_secs(2));
    assert!(
        h.sent().is_empty(),
        "a late throttle answer must not trigger a send"
    );
}

#[test]
fn late_memory_is_bounded() {
    let mut c = cfg();
    c.late_memory = 2;
    let mut h = Smsc::bound(c);
    for i in 0..3u64 {
        h.s.submit(i, sm(&format!("m{i}")), h.now).unwrap();
    }
    let sent = h.sent();
    h.advance(Duration::from_secs(6));
    assert_eq!(h.outcomes().len(), 3);
    for p in &sent {
        h.feed(submit_resp(p, 0));
    }
    let late: Vec<u64> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::LateResponse { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(late, [1, 2], "oldest forgotten, the rest matched");
    assert_eq!(h.s.stats().unmatched_responses, 1);
}

// ----- throttling -----

#[test]
fn throttling_requeues_in_original_order_at_front_with_identity() {
    let mut h = Smsc::bound(cfg()); // window 3
    for (i, n) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        h.s.submit(i as u64, sm(n), h.now).unwrap();
    }
    let first = h.sent();
    assert_eq!(names(&first), ["a", "b", "c"]);
    // SMSC throttles b then a (out of order), accepts c.
    h.feed(submit_resp(&first[1], status::ESME_RTHROTTLED));
    h.feed(submit_resp(&first[0], status::ESME_RMSGQFUL));
    h.feed(submit_resp(&first[2], 0));
    assert_eq!(h.outcomes(), vec![(2, accepted("c"))]);
    assert!(h.s.in_backoff(h.now));
    // During back-off nothing is sent, and d/e must not overtake a/b.
    assert!(h.sent().is_empty());
    h.advance(Duration::from_millis(199));
    assert!(h.sent().is_empty());
    assert_eq!(h.advance_to_deadline(), MS, "back-off ends after 200 ms");
    let second = h.sent();
    assert_eq!(names(&second), ["a", "b", "d"]);
    let first_seqs: Vec<u32> = first.iter().map(|p| p.sequence_number).collect();
    for p in &second {
        assert!(
            !first_seqs.contains(&p.sequence_number),
            "fresh sequence numbers"
        );
    }
    for p in &second {
        h.feed(submit_resp(p, 0));
    }
    let third = h.sent();
    assert_eq!(names(&third), ["e"]);
    h.feed(submit_resp(&third[0], 0));
    let mut got = h.outcomes();
    got.sort_by_key(|(t, _)| *t);
    assert_eq!(
        got,
        vec![
            (0, accepted("a")),
            (1, accepted("b")),
            (3, accepted("d")),
            (4, accepted("e"))
        ]
    );
}

#[test]
fn throttle_backoff_doubles_caps_and_gives_up_after_retry_limit() {
    let mut c = cfg();
    c.window = 1;
    c.throttle_max_retries = 4;
    let mut h = Smsc::bound(c);
    h.s.submit(9, sm("t"), h.now).unwrap();
    let mut gaps = Vec::new();
    let mut sends = 0;
    let mut last_send = h.now;
    loop {
        let p = h.take_one();
        sends += 1;
        gaps.push(h.now - last_send);
        last_send = h.now;
        h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
        let out = h.outcomes();
        if !out.is_empty() {
            assert_eq!(
                out,
                vec![(
                    9,
                    Outcome::Rejected {
                        status: status::ESME_RTHROTTLED
                    }
                )]
            );
            break;
        }
        h.advance_to_deadline();
    }
    assert_eq!(sends, 5, "first send + 4 retries");
    let ms: Vec<u128> = gaps.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [0, 200, 400, 800, 1000]);
}

#[test]
fn success_resets_backoff_level() {
    let mut c = cfg();
    c.window = 1;
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    let p = h.take_one();
    h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
    assert_eq!(h.advance_to_deadline(), 200 * MS);
    let p = h.take_one();
    h.feed(submit_resp(&p, 0));
    h.s.submit(2, sm("b"), h.now).unwrap();
    let p = h.take_one();
    h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
    assert_eq!(
        h.advance_to_deadline(),
        200 * MS,
        "level reset after a success"
    );
}

#[test]
fn generic_nack_for_a_submit_fails_it() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(3, sm("a"), h.now).unwrap();
    let p = h.take_one();
    h.feed(resp(&p, status::ESME_RINVCMDLEN, Body::GenericNack));
    assert_eq!(
        h.outcomes(),
        vec![(
            3,
            Outcome::Rejected {
                status: status::ESME_RINVCMDLEN
            }
        )]
    );
}

// ----- keep-alive -----

#[test]
fn enquire_link_right_after_bind_brings_the_link_up_at_once() {
    let mut h = Smsc::new(cfg());
    h.s.bind(h.now);
    let bind = h.take_one();
    h.feed(resp(
        &bind,
        0,
        Body::BindTransceiverResp(BindResp::default()),
    ));
    assert_eq!(h.s.last_enquire_ok(), None);
    // No wait for the 30 s idle interval: the probe goes out with the bind answer.
    let e = h.take_one();
    assert_eq!(e.body.command_id(), cmd::ENQUIRE_LINK);
    h.now += Duration::from_millis(3);
    h.feed(resp(&e, 0, Body::EnquireLinkResp));
    assert_eq!(h.s.last_enquire_ok(), Some(h.now));
    // An unanswered first probe still times out like any other.
    let mut h = Smsc::new(cfg());
    h.s.bind(h.now);
    let bind = h.take_one();
    h.feed(resp(
        &bind,
        0,
        Body::BindTransceiverResp(BindResp::default()),
    ));
    assert_eq!(h.take_one().body.command_id(), cmd::ENQUIRE_LINK);
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(5));
    assert!(h.events().contains(&Event::LinkDead));
}

#[test]
fn enquire_link_when_idle_and_health_signal() {
    let mut h = Smsc::bound(cfg());
    assert_eq!(
        h.s.last_enquire_ok(),
        Some(h.now),
        "the post-bind probe was answered"
    );
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(30));
    let e = h.take_one();
    assert_eq!(e.body.command_id(), cmd::ENQUIRE_LINK);
    h.now += Duration::from_millis(20);
    h.feed(resp(&e, 0, Body::EnquireLinkResp));
    assert_eq!(h.s.last_enquire_ok(), Some(h.now));
    assert_eq!(h.events(), vec![Event::EnquireOk { at: h.now }]);
    // Traffic counts as liveness: a PDU received 20 s later postpones the next probe.
    h.advance(Duration::from_secs(20));
    h.feed(Pdu {
        command_status: 0,
        sequence_number: 77,
        body: Body::EnquireLink,
    });
    let ans = h.take_one();
    assert_eq!(ans.body, Body::EnquireLinkResp);
    assert_eq!(
        ans.sequence_number, 77,
        "peer's enquire_link answered with its seq"
    );
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(30));
    assert_eq!(h.take_one().body.command_id(), cmd::ENQUIRE_LINK);
    assert_eq!(h.elapsed(), Duration::from_millis(80_020));
}

#[test]
fn missing_enquire_link_resp_is_link_dead_and_fails_everything() {
    let mut c = cfg();
    c.window = 1;
    c.resp_timeout = Duration::from_secs(60);
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.submit(2, sm("b"), h.now).unwrap();
    assert_eq!(names(&h.sent()), ["a"]);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.take_one().body.command_id(), cmd::ENQUIRE_LINK);
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(5));
    assert_eq!(
        h.events(),
        vec![
            Event::LinkDead,
            Event::Outcome {
                token: 1,
                outcome: Outcome::Unknown
            },
            Event::Outcome {
                token: 2,
                outcome: Outcome::NotSent
            },
            Event::Closed {
                reason: CloseReason::LinkDead
            }
        ]
    );
    assert_eq!(
        h.s.submit(3, sm("c"), h.now),
        Err(SubmitError::NotAccepting)
    );
}

// ----- unbind -----

#[test]
fn peer_unbind_is_answered_and_fails_pending() {
    let mut c = cfg();
    c.window = 1;
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.submit(2, sm("b"), h.now).unwrap();
    h.sent();
    h.feed(Pdu {
        command_status: 0,
        sequence_number: 500,
        body: Body::Unbind,
    });
    let r = h.take_one();
    assert_eq!((r.body, r.sequence_number), (Body::UnbindResp, 500));
    assert_eq!(
        h.events(),
        vec![
            Event::Outcome {
                token: 1,
                outcome: Outcome::Unknown
            },
            Event::Outcome {
                token: 2,
                outcome: Outcome::NotSent
            },
            Event::Closed {
                reason: CloseReason::PeerUnbind
            }
        ]
    );
}

#[test]
fn graceful_unbind_drains_then_unbinds() {
    let mut c = cfg();
    c.window = 1;
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.submit(2, sm("b"), h.now).unwrap();
    let a = h.take_one();
    h.s.unbind(h.now, Duration::from_secs(10));
    assert!(h.s.is_draining());
    assert_eq!(
        h.s.submit(3, sm("c"), h.now),
        Err(SubmitError::NotAccepting)
    );
    h.feed(submit_resp(&a, 0));
    let b = h.take_one();
    assert_eq!(name_of(&b), "b", "queued work still drains");
    h.feed(submit_resp(&b, 0));
    let u = h.take_one();
    assert_eq!(u.body, Body::Unbind);
    assert_eq!(h.s.state(), State::Unbinding);
    h.feed(resp(&u, 0, Body::UnbindResp));
    assert_eq!(
        h.events(),
        vec![
            Event::Outcome {
                token: 1,
                outcome: accepted("a")
            },
            Event::Outcome {
                token: 2,
                outcome: accepted("b")
            },
            Event::Closed {
                reason: CloseReason::Unbound
            }
        ]
    );
}

#[test]
fn drain_deadline_bounds_the_wait() {
    let mut c = cfg();
    c.window = 1;
    c.resp_timeout = Duration::from_secs(60);
    c.unbind_timeout = Duration::from_secs(1);
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.submit(2, sm("b"), h.now).unwrap();
    h.sent();
    h.s.unbind(h.now, Duration::from_secs(3));
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(3));
    assert_eq!(h.take_one().body, Body::Unbind);
    assert_eq!(
        h.outcomes(),
        vec![(1, Outcome::Unknown), (2, Outcome::NotSent)]
    );
    // No unbind_resp either: closed after unbind_timeout.
    assert_eq!(h.advance_to_deadline(), Duration::from_secs(1));
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            reason: CloseReason::UnbindTimeout
        }]
    );
}

// ----- malformed input -----

#[test]
fn unknown_command_id_gets_generic_nack_and_session_continues() {
    let mut h = Smsc::bound(cfg());
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&20u32.to_be_bytes());
    garbage.extend_from_slice(&0x0000_0099u32.to_be_bytes());
    garbage.extend_from_slice(&0u32.to_be_bytes());
    garbage.extend_from_slice(&1234u32.to_be_bytes());
    garbage.extend_from_slice(&[1, 2, 3, 4]);
    // Followed by a valid enquire_link in the same read: framing survives the bad PDU.
    let mut el = Vec::new();
    pdu::encode(
        &Pdu {
            command_status: 0,
            sequence_number: 9,
            body: Body::EnquireLink,
        },
        &mut el,
    )
    .unwrap();
    garbage.extend_from_slice(&el);
    h.feed_raw(&garbage);
    let out = h.sent();
    assert_eq!(out.len(), 2);
    assert_eq!(
        (&out[0].body, out[0].command_status, out[0].sequence_number),
        (&Body::GenericNack, status::ESME_RINVCMDID, 1234)
    );
    assert_eq!(
        (&out[1].body, out[1].sequence_number),
        (&Body::EnquireLinkResp, 9)
    );
    assert!(h.s.is_bound());
    h.s.submit(1, sm("still works"), h.now).unwrap();
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn invalid_command_length_nacks_and_closes() {
    let mut c = cfg();
    c.window = 1;
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.sent();
    let mut bad = Vec::new();
    bad.extend_from_slice(&8u32.to_be_bytes()); // below the 16-octet header
    bad.extend_from_slice(&cmd::ENQUIRE_LINK.to_be_bytes());
    bad.extend_from_slice(&0u32.to_be_bytes());
    bad.extend_from_slice(&55u32.to_be_bytes());
    h.feed_raw(&bad);
    let out = h.sent();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].body, Body::GenericNack);
    assert_eq!(out[0].command_status, status::ESME_RINVCMDLEN);
    assert_eq!(
        h.events(),
        vec![
            Event::Outcome {
                token: 1,
                outcome: Outcome::Unknown
            },
            Event::Closed {
                reason: CloseReason::Framing {
                    status: status::ESME_RINVCMDLEN
                }
            }
        ]
    );
}

#[test]
fn pdu_over_max_len_closes() {
    let mut c = cfg();
    c.max_pdu_len = 256;
    let mut h = Smsc::bound(c);
    let mut big = Vec::new();
    big.extend_from_slice(&10_000u32.to_be_bytes());
    big.extend_from_slice(&cmd::DELIVER_SM.to_be_bytes());
    big.extend_from_slice(&0u32.to_be_bytes());
    big.extend_from_slice(&3u32.to_be_bytes());
    h.feed_raw(&big);
    assert!(h.s.is_closed());
    assert!(matches!(
        h.events().last(),
        Some(Event::Closed {
            reason: CloseReason::Framing { .. }
        })
    ));
}

#[test]
fn malformed_submit_resp_with_ok_status_is_unknown_not_resent() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(1, sm("a"), h.now).unwrap();
    let p = h.take_one();
    // submit_sm_resp whose message_id exceeds its 65-octet field.
    let mut bad = Vec::new();
    bad.extend_from_slice(&(16u32 + 81).to_be_bytes());
    bad.extend_from_slice(&cmd::SUBMIT_SM_RESP.to_be_bytes());
    bad.extend_from_slice(&0u32.to_be_bytes());
    bad.extend_from_slice(&p.sequence_number.to_be_bytes());
    bad.extend_from_slice(&[b'7'; 80]);
    bad.push(0);
    h.feed_raw(&bad);
    assert_eq!(h.outcomes(), vec![(1, Outcome::Unknown)]);
    assert!(h.sent().is_empty(), "never answer an answer, never re-send");
    assert!(h.s.is_bound());
}

#[test]
fn input_split_at_every_byte_boundary() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(1, sm("a"), h.now).unwrap();
    h.s.submit(2, sm("b"), h.now).unwrap();
    let sent = h.sent();
    let mut bytes = Vec::new();
    for p in &sent {
        pdu::encode(&submit_resp(p, 0), &mut bytes).unwrap();
    }
    for b in &bytes {
        h.feed_raw(std::slice::from_ref(b));
    }
    assert_eq!(h.outcomes(), vec![(1, accepted("a")), (2, accepted("b"))]);
}

// ----- delivers -----

#[test]
fn deliver_is_answered_only_when_the_caller_says_so() {
    let mut h = Smsc::bound(cfg());
    h.feed(deliver(300));
    let ev = h.events();
    assert!(matches!(ev.as_slice(), [Event::Deliver { seq: 300, .. }]));
    assert!(h.sent().is_empty(), "no automatic deliver_sm_resp");
    h.s.respond_deliver(300, 0).unwrap();
    let r = h.take_one();
    assert_eq!(r.body.command_id(), cmd::DELIVER_SM_RESP);
    assert_eq!((r.sequence_number, r.command_status), (300, 0));
    assert!(h.s.respond_deliver(300, 0).is_err(), "answered once only");
}

#[test]
fn data_sm_gets_data_sm_resp() {
    let mut h = Smsc::bound(cfg());
    h.feed(Pdu {
        command_status: 0,
        sequence_number: 8,
        body: Body::DataSm(DataSm::default()),
    });
    assert!(matches!(
        h.events().as_slice(),
        [Event::Deliver { seq: 8, .. }]
    ));
    h.s.respond_deliver(8, status::ESME_RX_T_APPN).unwrap();
    let r = h.take_one();
    assert_eq!(r.body.command_id(), cmd::DATA_SM_RESP);
    assert_eq!(r.command_status, status::ESME_RX_T_APPN);
}

#[test]
fn unanswered_delivers_are_bounded() {
    let mut c = cfg();
    c.max_unanswered_delivers = 2;
    let mut h = Smsc::bound(c);
    h.feed(deliver(1));
    h.feed(deliver(2));
    h.feed(deliver(3));
    assert_eq!(h.events().len(), 2);
    let r = h.take_one();
    assert_eq!(
        (r.sequence_number, r.command_status),
        (3, status::ESME_RX_T_APPN)
    );
    h.s.respond_deliver(1, 0).unwrap();
    h.sent();
    h.feed(deliver(4));
    assert!(matches!(
        h.events().as_slice(),
        [Event::Deliver { seq: 4, .. }]
    ));
}

// ----- transport -----

#[test]
fn transport_loss_fails_outstanding_unknown_and_queued_not_sent_in_order() {
    let mut c = cfg();
    c.window = 2;
    let mut h = Smsc::bound(c);
    for i in 0..5u64 {
        h.s.submit(i, sm(&format!("m{i}")), h.now).unwrap();
    }
    h.sent();
    h.s.handle_transport_closed();
    assert_eq!(
        h.outcomes(),
        vec![
            (0, Outcome::Unknown),
            (1, Outcome::Unknown),
            (2, Outcome::NotSent),
            (3, Outcome::NotSent),
            (4, Outcome::NotSent)
        ]
    );
}

#[test]
fn throttled_then_closed_is_not_sent() {
    let mut h = Smsc::bound(cfg());
    h.s.submit(1, sm("a"), h.now).unwrap();
    let p = h.take_one();
    h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
    h.s.handle_transport_closed();
    // The SMSC refused it explicitly, so it is safe to send elsewhere.
    assert_eq!(h.outcomes(), vec![(1, Outcome::NotSent)]);
}

// ----- robustness -----

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: super::cases(512), ..ProptestConfig::default() })]

        /// Arbitrary bytes in arbitrary chunks never panic, and every submit still ends in
        /// exactly one outcome.
        #[test]
        fn arbitrary_input_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..16)
        ) {
            let mut h = Smsc::bound(cfg());
            for i in 0..4u64 {
                h.s.submit(i, sm("x"), h.now).unwrap();
            }
            for c in &chunks {
                h.feed_raw(c);
                h.advance(Duration::from_millis(700));
                let mut sink = Vec::new();
                h.s.poll_transmit(&mut sink);
            }
            h.s.handle_transport_closed();
            let mut tokens: Vec<u64> = h.outcomes().into_iter().map(|(t, _)| t).collect();
            tokens.sort();
            prop_assert_eq!(tokens, vec![0, 1, 2, 3]);
        }
    }
}

#[test]
fn a_whole_window_throttled_at_once_is_one_backoff_round() {
    let mut h = Smsc::bound(cfg()); // window 3, back-off 200 ms doubling
    for i in 0..3u64 {
        h.s.submit(i, sm(&format!("m{i}")), h.now).unwrap();
    }
    for p in h.sent() {
        h.feed(submit_resp(&p, status::ESME_RTHROTTLED));
    }
    assert_eq!(h.advance_to_deadline(), 200 * MS, "not 200·2³");
    let again = h.sent();
    assert_eq!(names(&again), ["m0", "m1", "m2"]);
    for p in &again {
        h.feed(submit_resp(p, status::ESME_RTHROTTLED));
    }
    assert_eq!(
        h.advance_to_deadline(),
        400 * MS,
        "second round doubles once"
    );
}

#[test]
fn submit_all_is_all_or_nothing() {
    let mut c = cfg();
    c.window = 1;
    c.max_pending = 3;
    let mut h = Smsc::bound(c);
    h.s.submit(0, sm("first"), h.now).unwrap(); // goes straight into the window
    let mut bad = sm("bad");
    bad.short_message = vec![b'x'; 300]; // over the 254-octet short_message limit
    let err =
        h.s.submit_all([(1, sm("a")), (2, bad), (3, sm("c"))], h.now)
            .unwrap_err();
    assert_eq!(err.0, 1);
    assert!(matches!(err.1, SubmitError::Encode(_)));
    assert_eq!(
        h.s.pending_len(),
        0,
        "nothing of the failed batch was queued"
    );
    let err =
        h.s.submit_all((1..=4).map(|i| (i, sm("p"))), h.now)
            .unwrap_err();
    assert_eq!(err, (3, SubmitError::QueueFull { max: 3 }));
    assert_eq!(h.s.pending_len(), 0);
    h.s.submit_all((1..=3).map(|i| (i, sm("p"))), h.now)
        .unwrap();
    assert_eq!(h.s.pending_len(), 3);
}

#[test]
fn a_peer_that_never_reads_cannot_grow_output_without_bound() {
    let mut c = cfg();
    c.max_output_len = 1024;
    let mut h = Smsc::bound(c);
    let mut flood = Vec::new();
    for seq in 0..200u32 {
        pdu::encode(
            &Pdu {
                command_status: 0,
                sequence_number: seq + 1,
                body: Body::EnquireLink,
            },
            &mut flood,
        )
        .unwrap();
    }
    // 200 answers of 16 octets = 3200 > 1024, and the caller never drains poll_transmit.
    h.feed_raw(&flood);
    assert!(h.s.is_closed());
    assert_eq!(
        h.events(),
        vec![Event::Closed {
            reason: CloseReason::OutputOverflow
        }]
    );
}

mod model {
    //! Random conversations with a misbehaving-but-valid SMSC, checking the invariants the
    //! gateway depends on after every step.
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Submit,
        /// Answer the i-th unanswered submit (mod len) with one of a few statuses.
        Answer(usize, u8),
        /// Answer an already answered or timed-out sequence number again (late/duplicate).
        Replay(usize),
        Advance(u16),
        Deliver,
        AckDeliver,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Submit),
            4 => (any::<usize>(), 0u8..4).prop_map(|(i, s)| Op::Answer(i, s)),
            1 => any::<usize>().prop_map(Op::Replay),
            2 => (0u16..3000).prop_map(Op::Advance),
            1 => Just(Op::Deliver),
            1 => Just(Op::AckDeliver),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: super::cases(256), ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_under_random_smsc_behaviour(ops in proptest::collection::vec(op(), 1..120)) {
            let mut c = cfg();
            c.window = 3;
            c.max_pending = 5;
            c.resp_timeout = Duration::from_secs(2);
            c.throttle_max_retries = 2;
            let window = c.window;
            let mut h = Smsc::bound(c);
            let mut next_token = 0u64;
            let mut unanswered: Vec<Pdu> = Vec::new(); // SMSC view
            let mut history: Vec<Pdu> = Vec::new();
            let mut sends: HashMap<u64, u32> = HashMap::new();
            let mut throttles: HashMap<u64, u32> = HashMap::new();
            let mut outcomes: HashMap<u64, Outcome> = HashMap::new();
            let mut admitted = 0u64;
            let mut delivers: Vec<u32> = Vec::new();
            let mut deliver_seq = 1u32;
            for op in ops {
                match op {
                    Op::Submit => {
                        let t = next_token;
                        next_token += 1;
                        match h.s.submit(t, sm(&t.to_string()), h.now) {
                            Ok(()) => admitted += 1,
                            Err(SubmitError::QueueFull { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Answer(i, s) if !unanswered.is_empty() => {
                        let p = unanswered.remove(i % unanswered.len());
                        let st = [0, status::ESME_RTHROTTLED, status::ESME_RMSGQFUL, status::ESME_RSUBMITFAIL][s as usize];
                        if st == status::ESME_RTHROTTLED || st == status::ESME_RMSGQFUL {
                            *throttles.entry(name_of(&p).parse().unwrap()).or_default() += 1;
                        }
                        h.feed(submit_resp(&p, st));
                        history.push(p);
                    }
                    Op::Answer(..) => {}
                    Op::Replay(i) if !history.is_empty() => {
                        let p = history[i % history.len()].clone();
                        h.feed(submit_resp(&p, 0));
                    }
                    Op::Replay(_) => {}
                    Op::Advance(ms) => h.advance(Duration::from_millis(ms as u64)),
                    Op::Deliver => {
                        deliver_seq += 1;
                        h.feed(deliver(deliver_seq));
                    }
                    Op::AckDeliver => {
                        if let Some(seq) = delivers.pop() {
                            h.s.respond_deliver(seq, 0).unwrap();
                        }
                    }
                }
                for p in h.sent() {
                    match p.body {
                        Body::SubmitSm(_) => {
                            let t: u64 = name_of(&p).parse().unwrap();
                            *sends.entry(t).or_default() += 1;
                            // A sequence number is never reused while the SMSC still owes it.
                            prop_assert!(unanswered.iter().all(|q| q.sequence_number != p.sequence_number));
                            prop_assert!(p.sequence_number != 0);
                            unanswered.push(p);
                        }
                        Body::EnquireLink => h.feed(resp(&p, 0, Body::EnquireLinkResp)),
                        _ => {}
                    }
                }
                prop_assert!(h.s.outstanding_len() <= window);
                for e in h.events() {
                    match e {
                        Event::Outcome { token, outcome } => {
                            prop_assert!(outcomes.insert(token, outcome).is_none(), "two outcomes for {}", token);
                        }
                        Event::Deliver { seq, .. } => delivers.push(seq),
                        _ => {}
                    }
                }
                // Re-sent only after an explicit throttling answer, never after a timeout.
                for (t, n) in &sends {
                    prop_assert!(*n <= 1 + throttles.get(t).copied().unwrap_or(0), "token {} sent {} times", t, n);
                }
            }
            h.s.handle_transport_closed();
            for e in h.events() {
                if let Event::Outcome { token, outcome } = e {
                    prop_assert!(outcomes.insert(token, outcome).is_none());
                }
            }
            prop_assert_eq!(outcomes.len() as u64, admitted, "every admitted submit has one outcome");
            for (t, o) in &outcomes {
                if *o == Outcome::NotSent {
                    // NotSent means the SMSC does not hold it: never written, or throttled back.
                    let s = sends.get(t).copied().unwrap_or(0);
                    prop_assert!(s == throttles.get(t).copied().unwrap_or(0), "token {} NotSent after {} sends", t, s);
                }
            }
        }
    }
}

#[test]
fn degenerate_config_does_not_spin_or_stall() {
    let mut c = cfg();
    c.window = 0;
    c.enquire_interval = Duration::ZERO;
    let mut h = Smsc::bound(c);
    h.s.submit(1, sm("a"), h.now).unwrap();
    assert_eq!(names(&h.sent()), ["a"], "window 0 would never send");
    h.advance(Duration::from_millis(10));
    let e = h.take_one();
    assert_eq!(e.body, Body::EnquireLink);
    h.feed(resp(&e, 0, Body::EnquireLinkResp));
    assert!(h.sent().is_empty(), "no enquire_link storm at interval 0");
}

#[test]
fn config_debug_does_not_print_the_password() {
    let c = SessionConfig::new(BindMode::Transceiver, "esme", "s3cr3t").unwrap();
    let s = format!("{c:?}");
    assert!(s.contains("esme") && !s.contains("s3cr3t"), "{s}");
    let b = smsgw::smpp::io::BindConfig::new("127.0.0.1", 2775, "esme", "s3cr3t");
    let s = format!("{b:?}");
    assert!(s.contains("2775") && !s.contains("s3cr3t"), "{s}");
}

#[test]
fn a_message_larger_than_the_queue_fits_an_idle_window() {
    let mut c = cfg();
    c.window = 10;
    c.max_pending = 2;
    let mut h = Smsc::bound(c);
    assert_eq!(h.s.pending_room(h.now), 12);
    h.s.submit_all((0..12).map(|i| (i, sm("p"))), h.now)
        .unwrap();
    assert_eq!(h.sent().len(), 10);
    assert_eq!(h.s.pending_len(), 2);
    assert_eq!(h.s.pending_room(h.now), 0);
    assert!(matches!(
        h.s.submit(99, sm("x"), h.now),
        Err(SubmitError::QueueFull { .. })
    ));
}

/// Property-test case count: the default keeps CI fast; fuzz longer with e.g.
/// `PROPTEST_CASES=200000 cargo test --release --test smpp_session -- fuzz model`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
