//! The SMSC simulator (`smsgw smsc-sim`) against clients: raw codec frames over TCP for the
//! protocol and fault behaviour, and two SMPP client implementations we did not write
//! (Python `smpplib` and `smpp34`) for interoperability.
//!
//! The simulator runs in-process on its own threads (`smsgw::sim::start`) on OS-chosen
//! loopback ports. The load measurement is `#[ignore]`d; run it with
//! `cargo test --release --test sim_interop -- --ignored --nocapture perf_`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use smsgw::sim::{self, DlrFormat, DlrRoute, IdFormat, SimArgs, SimHandle};
use smsgw::smpp::pdu::status::*;
use smsgw::smpp::pdu::{
    self, Addr21, Bind, Body, DataSm, Password, Pdu, SubmitSm, SubmitSmResp, SystemId, Tlvs,
    command_id as cmd, tag,
};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn start(args: SimArgs) -> SimHandle {
    sim::start(args).expect("simulator starts")
}

/// Fast receipts for tests.
fn args() -> SimArgs {
    SimArgs {
        dlr_delay_ms: 20,
        ..SimArgs::for_tests()
    }
}

/// A minimal ESME speaking raw PDUs through our codec, with blocking I/O and timeouts.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    seq: u32,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            buf: Vec::new(),
            seq: 0,
        }
    }

    fn send(&mut self, body: Body) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        self.send_with(seq, 0, body);
        seq
    }

    fn send_with(&mut self, seq: u32, status: u32, body: Body) {
        let mut out = Vec::new();
        pdu::encode(
            &Pdu {
                command_status: status,
                sequence_number: seq,
                body,
            },
            &mut out,
        )
        .expect("encode");
        self.s.write_all(&out).expect("write");
    }

    /// Next PDU; `None` when the simulator closed the connection.
    fn recv(&mut self) -> Option<Pdu> {
        self.recv_within(IO_TIMEOUT)
            .unwrap_or_else(|| panic!("no PDU within {IO_TIMEOUT:?}"))
    }

    /// `None` on timeout, `Some(None)` on close.
    fn recv_within(&mut self, d: Duration) -> Option<Option<Pdu>> {
        self.s.set_read_timeout(Some(d)).unwrap();
        let r = loop {
            match pdu::decode(&self.buf, 64 * 1024) {
                Ok(Some((p, used))) => {
                    self.buf.drain(..used);
                    break Some(Some(p));
                }
                Ok(None) => {}
                Err(e) => panic!("simulator sent an undecodable PDU: {e}"),
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => break Some(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(_) => break Some(None),
            }
        };
        self.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        r
    }

    /// Exactly `n` raw octets (for injected malformed PDUs).
    fn recv_raw(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let k = self.s.read(&mut chunk).expect("read");
            assert!(k > 0, "closed before {n} octets arrived");
            self.buf.extend_from_slice(&chunk[..k]);
        }
        self.buf.drain(..n).collect()
    }

    /// Whether the peer closed (reads EOF, possibly after `drain` more PDUs).
    fn closed_within(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            match self.recv_within(end - Instant::now()) {
                Some(None) => return true,
                Some(Some(_)) => continue,
                None => return false,
            }
        }
        false
    }

    fn bind(&mut self, kind: u32, system_id: &str, password: &str) -> Pdu {
        let b = Bind {
            system_id: SystemId::new(system_id.as_bytes()).unwrap(),
            password: Password::new(password.as_bytes()).unwrap(),
            interface_version: 0x34,
            ..Bind::default()
        };
        let body = match kind {
            cmd::BIND_TRANSMITTER => Body::BindTransmitter(b),
            cmd::BIND_RECEIVER => Body::BindReceiver(b),
            _ => Body::BindTransceiver(b),
        };
        let seq = self.send(body);
        let r = self.recv().expect("bind answer");
        assert_eq!(r.sequence_number, seq);
        assert_eq!(r.body.command_id(), kind | 0x8000_0000);
        r
    }

    fn bound(addr: SocketAddr, kind: u32, system_id: &str) -> Raw {
        let mut r = Raw::connect(addr);
        let resp = r.bind(kind, system_id, "pw");
        assert_eq!(resp.command_status, ESME_ROK, "bind refused");
        r
    }

    /// Sends one submit_sm and returns (status, message_id) of its answer.
    fn submit(&mut self, text: &[u8], registered_delivery: u8) -> (u32, String) {
        let seq = self.send(submit_sm(text, registered_delivery));
        let r = self.recv().expect("submit answer");
        assert_eq!(r.sequence_number, seq);
        match r.body {
            Body::SubmitSmResp(SubmitSmResp { message_id }) => {
                (r.command_status, message_id.as_str_lossy().into_owned())
            }
            other => panic!("expected submit_sm_resp, got {other:?}"),
        }
    }
}

fn submit_sm(text: &[u8], registered_delivery: u8) -> Body {
    Body::SubmitSm(SubmitSm {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: Addr21::new(b"12345").unwrap(),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: Addr21::new(b"4790000000").unwrap(),
        registered_delivery,
        short_message: text.to_vec(),
        ..SubmitSm::default()
    })
}

/// One request to the control API (`Connection: close`), JSON answer.
fn http(h: &SimHandle, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(h.control_addr().expect("control API on")).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).expect("JSON body"))
}

fn faults(h: &SimHandle, json: &str) -> Value {
    let (st, v) = http(h, "POST", "/faults", json);
    assert_eq!(st, 200, "POST /faults {json}: {v}");
    v
}

fn stats(h: &SimHandle) -> Value {
    http(h, "GET", "/stats", "").1
}

/// Polls /stats until `f` holds (receipts acked etc. are counted asynchronously).
fn wait_stats(h: &SimHandle, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + IO_TIMEOUT;
    loop {
        let s = stats(h);
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The receipt a deliver_sm carries: (receipted id from TLV, text form, message_state TLV).
fn receipt_of(p: &Pdu) -> (Option<String>, String, Option<u8>) {
    let Body::DeliverSm(sm) = &p.body else {
        panic!("expected deliver_sm, got {:?}", p.body)
    };
    assert_eq!(sm.esm_class & 0x3C, 0x04, "receipt esm_class");
    (
        sm.tlvs
            .get_cstr(tag::RECEIPTED_MESSAGE_ID)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        String::from_utf8_lossy(&sm.short_message).into_owned(),
        sm.tlvs.get_u8(tag::MESSAGE_STATE),
    )
}

fn ack(r: &mut Raw, p: &Pdu) {
    r.send_with(
        p.sequence_number,
        ESME_ROK,
        Body::DeliverSmResp(SubmitSmResp::default()),
    );
}

fn text_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let i = text.find(key)? + key.len();
    Some(text[i..].split(' ').next().unwrap_or(""))
}

#[test]
fn bind_submit_enquire_unbind() {
    let h = start(args());
    let mut r = Raw::connect(h.smpp_addr());
    // Not bound yet: submit_sm is refused with ESME_RINVBNDSTS.
    let (st, _) = r.submit(b"too early", 0);
    assert_eq!(st, ESME_RINVBNDSTS);
    let b = r.bind(cmd::BIND_TRANSCEIVER, "esme", "pw");
    assert_eq!(b.command_status, ESME_ROK);
    match &b.body {
        Body::BindTransceiverResp(br) => {
            assert_eq!(br.system_id.as_bytes(), b"SMSCSIM");
            assert_eq!(br.tlvs.get_u8(tag::SC_INTERFACE_VERSION), Some(0x34));
        }
        other => panic!("{other:?}"),
    }
    // A second bind on the same session: ESME_RALYBND.
    let again = r.bind(cmd::BIND_TRANSCEIVER, "esme", "pw");
    assert_eq!(again.command_status, ESME_RALYBND);

    let mut ids = std::collections::HashSet::new();
    for i in 0..50 {
        let (st, id) = r.submit(format!("msg {i}").as_bytes(), 0);
        assert_eq!(st, ESME_ROK);
        assert!(
            !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()),
            "{id}"
        );
        assert!(ids.insert(id), "message ids must be unique");
    }
    let seq = r.send(Body::EnquireLink);
    let p = r.recv().unwrap();
    assert_eq!(
        (p.body.command_id(), p.sequence_number),
        (cmd::ENQUIRE_LINK_RESP, seq)
    );

    // data_sm and query_sm are answered too.
    let seq = r.send(Body::DataSm(DataSm {
        source_addr: pdu::Addr65::new(b"12345").unwrap(),
        destination_addr: pdu::Addr65::new(b"4790000000").unwrap(),
        ..DataSm::default()
    }));
    let p = r.recv().unwrap();
    assert_eq!(
        (p.body.command_id(), p.command_status),
        (cmd::DATA_SM_RESP, ESME_ROK)
    );
    assert_eq!(p.sequence_number, seq);

    // An unknown command id gets generic_nack ESME_RINVCMDID and the session goes on.
    r.s.write_all(&[0, 0, 0, 16, 0, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 99])
        .unwrap();
    let p = r.recv().unwrap();
    assert_eq!(
        (p.body.command_id(), p.command_status, p.sequence_number),
        (cmd::GENERIC_NACK, ESME_RINVCMDID, 99)
    );

    let seq = r.send(Body::Unbind);
    let p = r.recv().unwrap();
    assert_eq!(
        (p.body.command_id(), p.sequence_number),
        (cmd::UNBIND_RESP, seq)
    );
    assert!(r.recv().is_none(), "the simulator closes after unbind_resp");

    let s = stats(&h);
    assert_eq!(s["submits_received"], 51);
    assert_eq!(s["data_sm_received"], 1);
    assert_eq!(s["enquire_links_received"], 1);
    assert_eq!(s["unbinds_received"], 1);
    assert_eq!(s["resps_by_status"]["0x00000000"], 51);
    assert_eq!(s["resps_by_status"]["0x00000004"], 1);
}

#[test]
fn receipts_text_and_tlv_with_hex_resp_and_decimal_receipt_ids() {
    let h = start(SimArgs {
        id_format: IdFormat::Hex,
        dlr_id_format: Some(IdFormat::Dec),
        id_start: 0xabc0,
        ..args()
    });
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    let (st, id) = r.submit(b"Hello receipt", 1);
    assert_eq!(st, ESME_ROK);
    assert_eq!(id, "abc0", "hex id in submit_sm_resp");
    // registered_delivery 0: no receipt for this one.
    r.submit(b"no receipt wanted", 0);
    let p = r.recv().expect("receipt");
    let (tlv_id, text, state) = receipt_of(&p);
    let decimal = u64::from_str_radix(&id, 16).unwrap().to_string();
    assert_eq!(tlv_id.as_deref(), Some(decimal.as_str()));
    assert_eq!(text_field(&text, "id:"), Some(decimal.as_str()), "{text}");
    assert_eq!(text_field(&text, "stat:"), Some("DELIVRD"), "{text}");
    assert_eq!(text_field(&text, "err:"), Some("000"), "{text}");
    assert_eq!(text_field(&text, "sub:"), Some("001"), "{text}");
    assert_eq!(text_field(&text, "dlvrd:"), Some("001"), "{text}");
    assert_eq!(text_field(&text, "date:").map(str::len), Some(10), "{text}");
    assert!(text.ends_with("text:Hello receipt"), "{text}");
    assert_eq!(state, Some(2));
    let Body::DeliverSm(sm) = &p.body else {
        unreachable!()
    };
    // Addresses are swapped: the receipt comes from the handset.
    assert_eq!(sm.source_addr.as_bytes(), b"4790000000");
    assert_eq!(sm.destination_addr.as_bytes(), b"12345");
    ack(&mut r, &p);
    wait_stats(&h, "receipt acked", |s| s["receipts_acked"] == 1);
    assert!(
        r.recv_within(Duration::from_millis(200)).is_none(),
        "only one receipt"
    );

    // Switch representation at runtime: TLV only, failure states.
    faults(&h, r#"{"dlr_format": "tlv", "dlr_states": {"UNDELIV": 1}}"#);
    let (_, id2) = r.submit(b"second", 1);
    let p = r.recv().expect("receipt");
    let (tlv_id, text, state) = receipt_of(&p);
    assert_eq!(
        tlv_id.unwrap(),
        u64::from_str_radix(&id2, 16).unwrap().to_string()
    );
    assert!(text.is_empty());
    assert_eq!(state, Some(5));
    let Body::DeliverSm(sm) = &p.body else {
        unreachable!()
    };
    assert_eq!(sm.tlvs.get(tag::NETWORK_ERROR_CODE), Some(&[3u8, 0, 1][..]));
    ack(&mut r, &p);

    faults(&h, r#"{"dlr_format": "text"}"#);
    r.submit(b"third", 1);
    let p = r.recv().expect("receipt");
    let (tlv_id, text, _) = receipt_of(&p);
    assert!(tlv_id.is_none());
    assert_eq!(text_field(&text, "stat:"), Some("UNDELIV"), "{text}");
    assert_eq!(text_field(&text, "dlvrd:"), Some("000"), "{text}");
    ack(&mut r, &p);
    let _ = DlrFormat::Both;
}

#[test]
fn receipt_is_retransmitted_until_acked_then_given_up() {
    let h = start(SimArgs {
        dlr_resp_timeout_ms: 150,
        dlr_max_retries: 2,
        ..args()
    });
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    let (_, id) = r.submit(b"retry me", 1);
    // First send + 2 retransmissions, each under a new sequence number, then nothing.
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let p = r.recv().expect("receipt (re)transmission");
        assert_eq!(receipt_of(&p).0.as_deref(), Some(id.as_str()));
        seqs.push(p.sequence_number);
    }
    seqs.dedup();
    assert_eq!(seqs.len(), 3, "a retransmission is a new request");
    assert!(r.recv_within(Duration::from_millis(500)).is_none());
    let s = wait_stats(&h, "receipt failed", |s| s["receipts_failed"] == 1);
    assert_eq!(s["receipts_sent"], 3);
    assert_eq!(s["receipts_retransmitted"], 2);
    assert_eq!(s["receipts_pending"], 0);

    // A late answer to an old sequence number is counted as unmatched, not a crash.
    r.send_with(
        seqs[0],
        ESME_ROK,
        Body::DeliverSmResp(SubmitSmResp::default()),
    );
    wait_stats(&h, "unmatched resp", |s| {
        s["deliver_sm_resp_unmatched"] == 1
    });

    // An error answer counts as "not delivered" and is retried like a timeout.
    let (_, id) = r.submit(b"nack me", 1);
    let p = r.recv().expect("receipt");
    r.send_with(
        p.sequence_number,
        ESME_RSYSERR,
        Body::DeliverSmResp(SubmitSmResp::default()),
    );
    let p2 = r.recv().expect("receipt again after the nack");
    assert_eq!(receipt_of(&p2).0.as_deref(), Some(id.as_str()));
    ack(&mut r, &p2);
    wait_stats(&h, "acked after nack", |s| {
        s["receipts_nacked"] == 1 && s["receipts_acked"] == 1
    });
}

#[test]
fn receipt_on_another_bind() {
    let h = start(SimArgs {
        dlr_route: DlrRoute::Other,
        ..args()
    });
    let mut a = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    let mut b = Raw::bound(h.smpp_addr(), cmd::BIND_RECEIVER, "esme");
    // A bind of another system_id never gets esme's receipts.
    let mut other = Raw::bound(h.smpp_addr(), cmd::BIND_RECEIVER, "other");
    let (_, id) = a.submit(b"route me elsewhere", 1);
    let p = b.recv().expect("receipt on the receiver bind");
    assert_eq!(receipt_of(&p).0.as_deref(), Some(id.as_str()));
    ack(&mut b, &p);
    assert!(a.recv_within(Duration::from_millis(200)).is_none());
    assert!(other.recv_within(Duration::from_millis(50)).is_none());

    // Route "same": back to the submitting transceiver.
    faults(&h, r#"{"dlr_route": "same"}"#);
    let (_, id) = a.submit(b"route me home", 1);
    let p = a.recv().expect("receipt on the submitting bind");
    assert_eq!(receipt_of(&p).0.as_deref(), Some(id.as_str()));
    ack(&mut a, &p);

    // A transmitter cannot receive: its receipts go to the receiver even with "same".
    let mut tx = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSMITTER, "esme");
    let (_, id) = tx.submit(b"from a transmitter", 1);
    let mut got = None;
    for c in [&mut b, &mut a] {
        if let Some(Some(p)) = c.recv_within(Duration::from_millis(500)) {
            got = Some(receipt_of(&p).0);
            ack(c, &p);
            break;
        }
    }
    assert_eq!(got.flatten().as_deref(), Some(id.as_str()));
}

#[test]
fn receipt_waits_for_a_receiver_and_moves_when_its_bind_closes() {
    let h = start(SimArgs {
        dlr_resp_timeout_ms: 60_000,
        ..args()
    });
    let mut tx = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSMITTER, "esme");
    let (_, id) = tx.submit(b"nobody listens yet", 1);
    std::thread::sleep(Duration::from_millis(150));
    // The receipt was kept, and goes to the receiver that binds later.
    let mut rx = Raw::bound(h.smpp_addr(), cmd::BIND_RECEIVER, "esme");
    let p = rx.recv().expect("receipt after the receiver bound");
    assert_eq!(receipt_of(&p).0.as_deref(), Some(id.as_str()));
    // Not acknowledged and the bind dies: the receipt goes to the next receiver.
    drop(rx);
    let mut rx2 = Raw::bound(h.smpp_addr(), cmd::BIND_RECEIVER, "esme");
    let p = rx2.recv().expect("receipt moved to the new bind");
    assert_eq!(receipt_of(&p).0.as_deref(), Some(id.as_str()));
    ack(&mut rx2, &p);
    wait_stats(&h, "acked", |s| {
        s["receipts_acked"] == 1 && s["receipts_pending"] == 0
    });
}

#[test]
fn receipt_ratio_and_failure_only_requests() {
    let h = start(SimArgs {
        dlr_percent: 50.0,
        ..args()
    });
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    for _ in 0..20 {
        r.submit(b"half of these", 1);
    }
    // registered_delivery 2 = failure only; every state is DELIVRD: no receipt.
    for _ in 0..10 {
        r.submit(b"failures only", 2);
    }
    let mut n = 0;
    while let Some(Some(p)) = r.recv_within(Duration::from_millis(300)) {
        ack(&mut r, &p);
        n += 1;
    }
    assert_eq!(n, 10, "exactly 50% of 20");
}

#[test]
fn bind_refusals() {
    let h = start(SimArgs {
        system_id: Some("esme".into()),
        password: Some("secret".into()),
        ..args()
    });
    let mut r = Raw::connect(h.smpp_addr());
    let p = r.bind(cmd::BIND_TRANSCEIVER, "esme", "wrong");
    assert_eq!(p.command_status, ESME_RINVPASWD);
    assert!(r.closed_within(IO_TIMEOUT), "closed after a refused bind");

    let mut r = Raw::connect(h.smpp_addr());
    let p = r.bind(cmd::BIND_TRANSMITTER, "nobody", "secret");
    assert_eq!(p.command_status, ESME_RINVSYSID);

    let mut r = Raw::connect(h.smpp_addr());
    assert_eq!(
        r.bind(cmd::BIND_RECEIVER, "esme", "secret").command_status,
        ESME_ROK
    );

    faults(&h, r#"{"refuse_binds": true}"#);
    let mut r = Raw::connect(h.smpp_addr());
    assert_eq!(
        r.bind(cmd::BIND_TRANSCEIVER, "esme", "secret")
            .command_status,
        ESME_RBINDFAIL
    );
    faults(&h, r#"{"refuse_bind_status": 88}"#);
    let mut r = Raw::connect(h.smpp_addr());
    assert_eq!(
        r.bind(cmd::BIND_TRANSCEIVER, "esme", "secret")
            .command_status,
        ESME_RTHROTTLED
    );
    let s = stats(&h);
    assert_eq!(s["binds_refused"], 4);
    assert_eq!(s["binds_ok"], 1);
}

#[test]
fn throttling_ratio_is_exact_and_adjustable() {
    let h = start(SimArgs {
        throttle_percent: 25.0,
        ..args()
    });
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    // Pipelined: 200 submits in one write, then read the 200 answers.
    let mut out = Vec::new();
    for i in 1..=200u32 {
        pdu::encode(
            &Pdu {
                command_status: 0,
                sequence_number: i,
                body: submit_sm(b"x", 0),
            },
            &mut out,
        )
        .unwrap();
    }
    r.s.write_all(&out).unwrap();
    let mut throttled = 0;
    for i in 1..=200u32 {
        let p = r.recv().unwrap();
        assert_eq!(p.sequence_number, i, "answers in order without latency");
        match p.command_status {
            ESME_RTHROTTLED => throttled += 1,
            ESME_ROK => {}
            s => panic!("unexpected status {s:#x}"),
        }
    }
    assert_eq!(throttled, 50);

    faults(&h, r#"{"throttle_percent": 10, "throttle_status": 20}"#);
    let mut msgqful = 0;
    for _ in 0..100 {
        let (st, _) = r.submit(b"y", 0);
        if st == ESME_RMSGQFUL {
            msgqful += 1;
        }
    }
    assert_eq!(msgqful, 10);
    let s = stats(&h);
    assert_eq!(s["resps_by_status"]["0x00000058"], 50);
    assert_eq!(s["resps_by_status"]["0x00000014"], 10);
    assert_eq!(s["resps_by_status"]["0x00000000"], 240);
}

#[test]
fn disconnect_after_n_submits_and_now() {
    let h = start(args());
    let mut a = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    let mut b = Raw::bound(h.smpp_addr(), cmd::BIND_RECEIVER, "esme");
    faults(&h, r#"{"disconnect_after_submits": 5}"#);
    let mut out = Vec::new();
    for i in 1..=10u32 {
        pdu::encode(
            &Pdu {
                command_status: 0,
                sequence_number: i,
                body: submit_sm(b"x", 0),
            },
            &mut out,
        )
        .unwrap();
    }
    a.s.write_all(&out).unwrap();
    let mut answered = 0;
    while let Some(p) = a.recv() {
        assert_eq!(p.body.command_id(), cmd::SUBMIT_SM_RESP);
        answered += 1;
    }
    assert_eq!(answered, 5, "exactly N answers, then the connection closes");
    assert!(b.closed_within(IO_TIMEOUT), "every session is closed");
    assert_eq!(
        http(&h, "GET", "/faults", "").1["disconnect_after_submits"],
        Value::Null
    );

    // One-shot: new sessions work normally again; disconnect_now closes them all.
    let mut c = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    let mut d = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    assert_eq!(c.submit(b"ok", 0).0, ESME_ROK);
    let v = faults(&h, r#"{"disconnect_now": true}"#);
    assert_eq!(v["disconnected"], 2);
    assert!(c.closed_within(IO_TIMEOUT));
    assert!(d.closed_within(IO_TIMEOUT));
    wait_stats(&h, "sessions gone", |s| s["sessions_open"] == 0);
}

#[test]
fn malformed_pdu_injection() {
    let h = start(args());
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");

    // An extra request with an unknown command_id, then the normal answer.
    faults(&h, r#"{"malformed": {"kind": "unknown_command"}}"#);
    let seq = r.send(submit_sm(b"x", 0));
    let raw = r.recv_raw(16);
    assert_eq!(&raw[..8], &[0, 0, 0, 16, 0, 0, 0, 0xFF]);
    let p = r.recv().unwrap();
    assert_eq!(
        (p.body.command_id(), p.sequence_number),
        (cmd::SUBMIT_SM_RESP, seq)
    );

    // Two answers with a sequence number the ESME never used, then normal again.
    faults(
        &h,
        r#"{"malformed": {"kind": "wrong_sequence", "count": 2}}"#,
    );
    for _ in 0..2 {
        let seq = r.send(submit_sm(b"x", 0));
        let p = r.recv().unwrap();
        assert_eq!(p.body.command_id(), cmd::SUBMIT_SM_RESP);
        assert_ne!(p.sequence_number, seq);
    }
    assert_eq!(r.submit(b"normal", 0).0, ESME_ROK);

    // message_id without its NUL: our own codec must call it a body error.
    faults(&h, r#"{"malformed": {"kind": "corrupt_resp"}}"#);
    r.send(submit_sm(b"x", 0));
    let mut frame = r.recv_raw(16);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    frame.extend(r.recv_raw(len - 16));
    assert!(!frame[16..].contains(&0) && frame.len() == 16 + 70);
    assert!(pdu::decode(&frame, 65536).is_err());

    // command_length 8: framing is lost for the ESME.
    faults(&h, r#"{"malformed": {"kind": "bad_length"}}"#);
    r.send(submit_sm(b"x", 0));
    let raw = r.recv_raw(16);
    assert_eq!(&raw[..4], &[0, 0, 0, 8]);
    assert_eq!(stats(&h)["malformed_injected"], 5);
}

#[test]
fn latency_pause_and_messages() {
    let h = start(args());
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme");
    faults(&h, r#"{"latency_ms": 200}"#);
    let t = Instant::now();
    assert_eq!(r.submit(b"slow", 0).0, ESME_ROK);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(190), "{took:?}");

    faults(&h, r#"{"latency_ms": 0, "paused": true}"#);
    std::thread::sleep(Duration::from_millis(50));
    let seq = r.send(submit_sm(b"held", 0));
    assert!(
        r.recv_within(Duration::from_millis(300)).is_none(),
        "paused: no answer"
    );
    faults(&h, r#"{"paused": false}"#);
    let p = r.recv().unwrap();
    assert_eq!(p.sequence_number, seq);

    // A concatenated UCS2 part with UDH, and a message with SAR TLVs.
    let mut sm = vec![5, 0, 3, 0x2a, 2, 1];
    sm.extend("Ωμέγα".encode_utf16().flat_map(|u| u.to_be_bytes()));
    let mut tlvs = Tlvs::new();
    tlvs.push_u16(tag::SAR_MSG_REF_NUM, 0x0102);
    tlvs.push_u8(tag::SAR_TOTAL_SEGMENTS, 3);
    tlvs.push_u8(tag::SAR_SEGMENT_SEQNUM, 2);
    let seq1 = r.send(Body::SubmitSm(SubmitSm {
        esm_class: 0x40,
        data_coding: 8,
        short_message: sm,
        destination_addr: Addr21::new(b"4711").unwrap(),
        ..SubmitSm::default()
    }));
    let id1 = match r.recv().unwrap().body {
        Body::SubmitSmResp(x) => x.message_id.as_str_lossy().into_owned(),
        b => panic!("{b:?}"),
    };
    r.send(Body::SubmitSm(SubmitSm {
        short_message: b"part two".to_vec(),
        tlvs,
        ..SubmitSm::default()
    }));
    r.recv().unwrap();
    let (st, v) = http(&h, "GET", "/messages?limit=2", "");
    assert_eq!(st, 200);
    let m = v["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(v["total"], 4);
    assert_eq!(m[0]["sequence_number"], seq1);
    assert_eq!(m[0]["message_id"], id1.as_str());
    assert_eq!(m[0]["destination"], "4711");
    assert_eq!(m[0]["esm_class"], 0x40);
    assert_eq!(m[0]["data_coding"], 8);
    assert_eq!(m[0]["udh"]["concat"]["ref"], 0x2a);
    assert_eq!(m[0]["udh"]["concat"]["total"], 2);
    assert_eq!(m[0]["text"], "Ωμέγα");
    assert_eq!(m[1]["sar"]["ref"], 0x0102);
    assert_eq!(m[1]["sar"]["seq"], 2);
    assert_eq!(m[1]["text"], "part two");
    assert_eq!(m[1]["short_message_hex"], "706172742074776f");

    // Reset: counters, messages and faults back to the start.
    faults(&h, r#"{"throttle_percent": 100}"#);
    assert_eq!(http(&h, "POST", "/reset", "").0, 200);
    assert_eq!(http(&h, "GET", "/messages", "").1["total"], 0);
    assert_eq!(stats(&h)["submits_received"], 0);
    assert_eq!(r.submit(b"after reset", 0).0, ESME_ROK);

    // Bad control requests are refused without changing anything.
    assert_eq!(
        http(&h, "POST", "/faults", r#"{"throttle_percent": 101}"#).0,
        400
    );
    assert_eq!(http(&h, "POST", "/faults", r#"{"no_such": 1}"#).0, 400);
    assert_eq!(http(&h, "GET", "/nope", "").0, 404);
    assert_eq!(http(&h, "DELETE", "/stats", "").0, 405);
}

/// Runs a Python client script; `None` (with a visible SKIPPED line) only when the package is
/// not importable.
fn run_python(script: &str, h: &SimHandle, package: &str) -> Option<Value> {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let addr = h.smpp_addr();
    let out = match Command::new("python3")
        .arg(&path)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg("esme")
        .arg("secret")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: python3 not runnable ({e}), so {package} is not importable");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) && stdout.starts_with("SKIP") {
        eprintln!("SKIPPED: {}", stdout.trim());
        return None;
    }
    assert!(
        out.status.success(),
        "{script} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let line = stdout.lines().last().expect("JSON line");
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

fn interop_args() -> SimArgs {
    SimArgs {
        system_id: Some("esme".into()),
        password: Some("secret".into()),
        ..args()
    }
}

/// Receipts name exactly the ids the submits got, each once.
fn assert_receipts_match(v: &Value) {
    let mut ids: Vec<String> = v["resp_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let mut got: Vec<String> = v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["esm_class"], 4, "{r}");
            assert_eq!(r["message_state"], 2, "{r}");
            let text = r["text"].as_str().unwrap();
            let id = r["receipted_message_id"].as_str().unwrap().to_string();
            assert_eq!(text_field(text, "id:"), Some(id.as_str()), "{text}");
            assert_eq!(text_field(text, "stat:"), Some("DELIVRD"), "{text}");
            id
        })
        .collect();
    ids.sort();
    got.sort();
    assert_eq!(ids, got);
}

#[test]
fn interop_smpplib_client() {
    let h = start(interop_args());
    let Some(v) = run_python("smpplib_client.py", &h, "smpplib") else {
        return;
    };
    assert_eq!(v["gsm_parts"], 1);
    assert_eq!(v["ucs_parts"], 3, "{v}");
    assert_eq!(v["ucs_data_coding"], 8);
    assert_eq!(v["ucs_esm_class"], 0x40);
    assert_eq!(v["submitted"], 4);
    assert_eq!(v["resp_ids"].as_array().unwrap().len(), 4, "{v}");
    assert_receipts_match(&v);
    assert_eq!(v["enquire_link"], "enquire_link_resp");
    assert_eq!(v["unbind"], "unbind_resp");
    assert_eq!(v["unbind_status"], 0);

    // What arrived at the SMSC, as the control API shows it.
    let m = http(&h, "GET", "/messages", "").1;
    let msgs = m["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[0]["data_coding"], 0);
    assert_eq!(msgs[0]["text"], "Hello from smpplib, 1 part");
    let mut text = String::new();
    for (i, part) in msgs[1..].iter().enumerate() {
        assert_eq!(part["data_coding"], 8);
        assert_eq!(part["udh"]["concat"]["total"], 3);
        assert_eq!(part["udh"]["concat"]["seq"], i + 1);
        text.push_str(part["text"].as_str().unwrap());
    }
    assert_eq!(text, "Привет, мир! Это длинное сообщение. ".repeat(5));
    let s = stats(&h);
    assert_eq!(s["receipts_acked"], 4);
    assert_eq!(s["enquire_links_received"], 1);
    assert_eq!(s["unbinds_received"], 1);
}

#[test]
fn interop_smpp34_client() {
    let h = start(interop_args());
    let Some(v) = run_python("smpp34_client.py", &h, "smpp34") else {
        return;
    };
    assert_eq!(v["ucs_parts"], 3, "{v}");
    assert_eq!(v["submitted"], 4);
    assert!(
        v["statuses"].as_array().unwrap().iter().all(|s| s == 0),
        "{v}"
    );
    assert_receipts_match(&v);
    let m = http(&h, "GET", "/messages", "").1;
    let msgs = m["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[0]["text"], "Hello from smpp34");
    let mut text = String::new();
    for part in &msgs[1..] {
        assert_eq!(part["udh"]["concat"]["ref"], 0x42);
        text.push_str(part["text"].as_str().unwrap());
    }
    assert_eq!(
        text,
        "Καλημέρα κόσμε, αυτό είναι ένα μεγάλο μήνυμα. ".repeat(3)
    );
    let s = wait_stats(&h, "smpp34 unbound", |s| s["sessions_open"] == 0);
    assert_eq!(s["receipts_acked"], 4);
    assert_eq!(s["unbinds_received"], 1);
}

/// Load measurement (not a pass/fail test): one connection pipelining submit_sm with a window
/// against a single-threaded simulator, bounded by count and time. Run in release:
/// `cargo test --release --test sim_interop -- --ignored --nocapture perf_`
/// Env: `SIM_PERF_COUNT` (default 3_000_000), `SIM_PERF_SECS` (10), `SIM_PERF_WINDOW` (1000),
/// `SIM_PERF_RECORD` (ring capacity, default 1000; 0 turns recording off).
#[test]
#[ignore]
fn perf_pipelined_submit_one_core() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let count = env("SIM_PERF_COUNT", 3_000_000);
    let secs = env("SIM_PERF_SECS", 10);
    let window = env("SIM_PERF_WINDOW", 1000).max(2);
    let h = start(SimArgs {
        cores: 1,
        messages_capacity: env("SIM_PERF_RECORD", 1000) as usize,
        ..SimArgs::for_tests()
    });
    let mut r = Raw::bound(h.smpp_addr(), cmd::BIND_TRANSMITTER, "perf");
    // One block of `window / 2` pre-encoded submit_sm, written again and again: the client
    // must cost less than the server.
    let chunk = window / 2;
    let mut block = Vec::new();
    for i in 0..chunk {
        pdu::encode(
            &Pdu {
                command_status: 0,
                sequence_number: (i + 1) as u32,
                body: submit_sm(b"Load test message of a typical length, 7-bit text", 0),
            },
            &mut block,
        )
        .unwrap();
    }
    let received = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut rd = r.s.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let reader = {
        let (received, failed, done) = (received.clone(), failed.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut have = 0;
            while !done.load(Ordering::Relaxed) {
                let n = match rd.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                have += n;
                let mut at = 0;
                let mut got = 0;
                while have - at >= 16 {
                    let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                    if have - at < len {
                        break;
                    }
                    let status = u32::from_be_bytes(buf[at + 8..at + 12].try_into().unwrap());
                    if status != 0 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    got += 1;
                    at += len;
                }
                buf.copy_within(at..have, 0);
                have -= at;
                received.fetch_add(got, Ordering::Release);
            }
        })
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut sent = 0u64;
    while sent < count && Instant::now() < deadline {
        if sent - received.load(Ordering::Acquire) + chunk > window {
            std::thread::yield_now();
            continue;
        }
        r.s.write_all(&block).unwrap();
        sent += chunk;
    }
    while received.load(Ordering::Acquire) < sent && t0.elapsed() < Duration::from_secs(secs + 5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let got = received.load(Ordering::Acquire);
    reader.join().unwrap();
    let rate = got as f64 / elapsed.as_secs_f64();
    println!(
        "smsc-sim perf: {got} submit_sm_resp of {sent} sent in {:.2}s over 1 connection, window {window}: {rate:.0} msg/s ({} non-OK)",
        elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(got, sent, "every submit answered");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[test]
fn two_event_loops_unique_ids_and_cross_thread_receipts() {
    let h = start(SimArgs {
        cores: 2,
        dlr_route: DlrRoute::Any,
        ..args()
    });
    let mut conns: Vec<Raw> = (0..6)
        .map(|_| Raw::bound(h.smpp_addr(), cmd::BIND_TRANSCEIVER, "esme"))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for c in conns.iter_mut() {
        for _ in 0..20 {
            let (st, id) = c.submit(b"spread", 1);
            assert_eq!(st, ESME_ROK);
            assert!(ids.insert(id), "ids unique over both threads");
        }
    }
    // Every receipt arrives exactly once, on whichever bind it was routed to.
    let mut got = std::collections::HashSet::new();
    let end = Instant::now() + IO_TIMEOUT;
    while got.len() < ids.len() && Instant::now() < end {
        for c in conns.iter_mut() {
            while let Some(Some(p)) = c.recv_within(Duration::from_millis(20)) {
                let id = receipt_of(&p).0.expect("receipted_message_id");
                assert!(got.insert(id), "receipt delivered twice");
                ack(c, &p);
            }
        }
    }
    assert_eq!(got, ids);
    wait_stats(&h, "all acked", |s| {
        s["receipts_acked"] == 120 && s["receipts_pending"] == 0
    });
}

/// The `smsgw smsc-sim` subcommand: flags parsed, ports printed, SMPP served.
#[test]
fn binary_subcommand_starts_and_serves() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .args([
            "smsc-sim",
            "--listen",
            "127.0.0.1:0",
            "--control-port",
            "0",
            "--id-format",
            "hex-upper",
            "--id-width",
            "8",
            "--id-start",
            "255",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn smsgw smsc-sim");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let smpp = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("smpp="))
            .unwrap_or_else(|| panic!("no smpp= in {line:?}"));
        let control = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("control="))
            .unwrap_or_else(|| panic!("no control= in {line:?}"));
        assert!(control.parse::<SocketAddr>().is_ok(), "{line}");
        let mut r = Raw::bound(smpp.parse().unwrap(), cmd::BIND_TRANSCEIVER, "esme");
        assert_eq!(r.submit(b"hi", 0), (ESME_ROK, "000000FF".to_string()));
    });
    // Only the process this test started, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
