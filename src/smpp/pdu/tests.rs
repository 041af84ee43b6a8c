//! Codec tests: hex fixtures built by hand from the v3.4 spec (section 4), property tests
//! (round trip, prefixes, arbitrary and mutated input), and error-contract tests.

use super::super::tlv::{Tlvs, tag};
use super::*;
use proptest::prelude::*;

/// Hex with free whitespace and `|` separators, so fixtures can be laid out field by field.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| (b as char).to_digit(16).unwrap() as u8)
        .collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd hex digit count in fixture"
    );
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

fn c<const N: usize>(s: &str) -> COctet<N> {
    COctet::new(s.as_bytes()).unwrap()
}

fn tlvs(items: &[(u16, &[u8])]) -> Tlvs {
    let mut t = Tlvs::new();
    for (tag, v) in items {
        t.push(*tag, v).unwrap();
    }
    t
}

fn pdu(status: u32, seq: u32, body: Body) -> Pdu {
    Pdu {
        command_status: status,
        sequence_number: seq,
        body,
    }
}

/// The fixture decodes to `expected`, and `expected` encodes to exactly the fixture.
#[track_caller]
fn fixture(wire_hex: &str, expected: Pdu) {
    let wire = hex(wire_hex);
    assert_eq!(
        u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
        wire.len(),
        "fixture command_length does not match its own size"
    );
    let (got, used) = decode(&wire, DEFAULT_MAX_PDU_LEN)
        .expect("fixture decodes")
        .expect("fixture is complete");
    assert_eq!(got, expected);
    assert_eq!(used, wire.len());
    let mut out = Vec::new();
    encode(&expected, &mut out).expect("fixture encodes");
    assert_eq!(out, wire, "encode differs from the hand-built frame");
    assert_eq!(encoded_len(&expected), wire.len());
    for n in 0..wire.len() {
        assert_eq!(
            decode(&wire[..n], DEFAULT_MAX_PDU_LEN),
            Ok(None),
            "prefix {n}"
        );
    }
}

#[track_caller]
fn decode_err(wire_hex: &str) -> DecodeError {
    decode(&hex(wire_hex), DEFAULT_MAX_PDU_LEN).expect_err("must not decode")
}

fn submit_sm_example() -> SubmitSm {
    SubmitSm {
        source_addr_ton: 5,
        source_addr: c("Acme"),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: c("447700900123"),
        validity_period: c("000001000000000R"),
        registered_delivery: 1,
        short_message: b"Hello".to_vec(),
        ..Default::default()
    }
}

// --- fixtures, one per PDU type ----------------------------------------------------------

#[test]
fn fixture_submit_sm() {
    fixture(
        "00000046 00000004 00000000 00000001 |
         00 | 05 00 41636d6500 | 01 01 34343737303039303031323300 | 00 00 00 |
         00 | 3030303030313030303030303030305200 | 01 00 00 00 | 05 48656c6c6f",
        pdu(0, 1, Body::SubmitSm(submit_sm_example())),
    );
}

#[test]
fn fixture_submit_sm_with_sar_and_unknown_tlv() {
    let mut sm = submit_sm_example();
    sm.tlvs = tlvs(&[
        (tag::SAR_MSG_REF_NUM, &[0x12, 0x34]),
        (tag::SAR_TOTAL_SEGMENTS, &[3]),
        (tag::SAR_SEGMENT_SEQNUM, &[1]),
        (0x1400, b"vendor"), // unknown: preserved byte for byte
    ]);
    fixture(
        "00000060 00000004 00000000 00000001 |
         00 | 05 00 41636d6500 | 01 01 34343737303039303031323300 | 00 00 00 |
         00 | 3030303030313030303030303030305200 | 01 00 00 00 | 05 48656c6c6f |
         020c 0002 1234 | 020e 0001 03 | 020f 0001 01 | 1400 0006 76656e646f72",
        pdu(0, 1, Body::SubmitSm(sm)),
    );
}

#[test]
fn fixture_submit_sm_resp() {
    fixture(
        "00000017 80000004 00000000 00000001 | 61626331323300",
        pdu(
            0,
            1,
            Body::SubmitSmResp(SubmitSmResp {
                message_id: c("abc123"),
            }),
        ),
    );
}

#[test]
fn fixture_deliver_sm_receipt_with_tlvs() {
    let sm = SubmitSm {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("447700900123"),
        dest_addr_ton: 5,
        destination_addr: c("Acme"),
        esm_class: 0x04,
        short_message: b"id:7 stat:DELIVRD".to_vec(),
        tlvs: tlvs(&[
            (tag::RECEIPTED_MESSAGE_ID, b"7\0"),
            (tag::MESSAGE_STATE, &[2]),
        ]),
        ..Default::default()
    };
    fixture(
        "0000004d 00000005 00000000 0000002a |
         00 | 01 01 34343737303039303031323300 | 05 00 41636d6500 | 04 00 00 |
         00 | 00 | 00 00 00 00 | 11 69643a3720737461743a44454c49565244 |
         001e 0002 3700 | 0427 0001 02",
        pdu(0, 42, Body::DeliverSm(sm)),
    );
}

#[test]
fn fixture_deliver_sm_resp() {
    fixture(
        "00000011 80000005 00000000 0000002a | 00",
        pdu(0, 42, Body::DeliverSmResp(SubmitSmResp::default())),
    );
}

fn bind_example() -> Bind {
    Bind {
        system_id: c("smppclient1"),
        password: c("password"),
        interface_version: 0x34,
        ..Default::default()
    }
}

#[test]
fn fixture_binds() {
    let body = "736d7070636c69656e743100 | 70617373776f726400 | 00 | 34 00 00 | 00";
    fixture(
        &format!("0000002a 00000009 00000000 00000001 | {body}"),
        pdu(0, 1, Body::BindTransceiver(bind_example())),
    );
    fixture(
        &format!("0000002a 00000002 00000000 00000001 | {body}"),
        pdu(0, 1, Body::BindTransmitter(bind_example())),
    );
    fixture(
        &format!("0000002a 00000001 00000000 00000001 | {body}"),
        pdu(0, 1, Body::BindReceiver(bind_example())),
    );
}

#[test]
fn fixture_bind_resps() {
    let resp = BindResp {
        system_id: c("SMSC"),
        tlvs: tlvs(&[(tag::SC_INTERFACE_VERSION, &[0x34])]),
    };
    fixture(
        "0000001a 80000009 00000000 00000001 | 534d534300 | 0210 0001 34",
        pdu(0, 1, Body::BindTransceiverResp(resp.clone())),
    );
    fixture(
        "0000001a 80000002 00000000 00000001 | 534d534300 | 0210 0001 34",
        pdu(0, 1, Body::BindTransmitterResp(resp.clone())),
    );
    fixture(
        "0000001a 80000001 00000000 00000001 | 534d534300 | 0210 0001 34",
        pdu(0, 1, Body::BindReceiverResp(resp)),
    );
}

#[test]
fn fixture_outbind() {
    fixture(
        "00000018 0000000b 00000000 00000003 | 534d534300 | 707700",
        pdu(
            0,
            3,
            Body::Outbind(Outbind {
                system_id: c("SMSC"),
                password: c("pw"),
            }),
        ),
    );
}

#[test]
fn fixture_header_only_pdus() {
    fixture(
        "00000010 00000006 00000000 00000004",
        pdu(0, 4, Body::Unbind),
    );
    fixture(
        "00000010 80000006 00000000 00000004",
        pdu(0, 4, Body::UnbindResp),
    );
    fixture(
        "00000010 00000015 00000000 00000005",
        pdu(0, 5, Body::EnquireLink),
    );
    fixture(
        "00000010 80000015 00000000 00000005",
        pdu(0, 5, Body::EnquireLinkResp),
    );
    fixture(
        "00000010 80000000 00000003 00000007",
        pdu(ESME_RINVCMDID, 7, Body::GenericNack),
    );
    fixture(
        "00000010 80000008 00000000 00000009",
        pdu(0, 9, Body::CancelSmResp),
    );
    fixture(
        "00000010 80000007 00000000 0000000a",
        pdu(0, 10, Body::ReplaceSmResp),
    );
}

#[test]
fn fixture_submit_multi() {
    let sm = SubmitMulti {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("12345"),
        dest_addresses: vec![
            DestAddress::Sme {
                ton: 1,
                npi: 1,
                addr: c("111"),
            },
            DestAddress::DistributionList(c("list")),
        ],
        data_coding: 8,
        short_message: vec![0x00, 0x41],
        ..Default::default()
    };
    fixture(
        "00000033 00000021 00000000 00000001 |
         00 | 01 01 313233343500 | 02 | 01 01 01 31313100 | 02 6c69737400 |
         00 00 00 | 00 | 00 | 00 00 08 00 | 02 0041",
        pdu(0, 1, Body::SubmitMulti(sm)),
    );
}

#[test]
fn fixture_submit_multi_resp() {
    let resp = SubmitMultiResp {
        message_id: c("m1"),
        unsuccess_smes: vec![UnsuccessSme {
            ton: 1,
            npi: 1,
            addr: c("999"),
            error_status_code: ESME_RINVDSTADR,
        }],
    };
    fixture(
        "0000001e 80000021 00000000 00000001 | 6d3100 | 01 | 01 01 39393900 0000000b",
        pdu(0, 1, Body::SubmitMultiResp(resp)),
    );
}

#[test]
fn fixture_data_sm_and_resp() {
    let d = DataSm {
        service_type: c("WAP"),
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("12345"),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: c("678"),
        registered_delivery: 1,
        data_coding: 4,
        tlvs: tlvs(&[(tag::MESSAGE_PAYLOAD, &[1, 2, 3])]),
        ..Default::default()
    };
    fixture(
        "0000002c 00000103 00000000 00000001 |
         57415000 | 01 01 313233343500 | 01 01 36373800 | 00 01 04 | 0424 0003 010203",
        pdu(0, 1, Body::DataSm(d)),
    );
    let r = DataSmResp {
        message_id: c("id9"),
        tlvs: tlvs(&[(tag::ADDITIONAL_STATUS_INFO_TEXT, b"ok\0")]),
    };
    fixture(
        "0000001b 80000103 00000000 00000001 | 69643900 | 001d 0003 6f6b00",
        pdu(0, 1, Body::DataSmResp(r)),
    );
}

#[test]
fn fixture_query_sm_and_resp() {
    let q = QuerySm {
        message_id: c("m1"),
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("123"),
    };
    fixture(
        "00000019 00000003 00000000 00000001 | 6d3100 | 01 01 31323300",
        pdu(0, 1, Body::QuerySm(q)),
    );
    let r = QuerySmResp {
        message_id: c("m1"),
        final_date: COctet::empty(),
        message_state: 2,
        error_code: 0,
    };
    fixture(
        "00000016 80000003 00000000 00000001 | 6d3100 | 00 | 02 00",
        pdu(0, 1, Body::QuerySmResp(r)),
    );
}

#[test]
fn fixture_cancel_sm() {
    let cs = CancelSm {
        message_id: c("m1"),
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("123"),
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: c("456"),
        ..Default::default()
    };
    fixture(
        "00000020 00000008 00000000 00000001 | 00 | 6d3100 | 01 01 31323300 | 01 01 34353600",
        pdu(0, 1, Body::CancelSm(cs)),
    );
}

#[test]
fn fixture_replace_sm() {
    let rs = ReplaceSm {
        message_id: c("m1"),
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("123"),
        registered_delivery: 1,
        short_message: b"hi".to_vec(),
        ..Default::default()
    };
    fixture(
        "00000020 00000007 00000000 00000001 | 6d3100 | 01 01 31323300 | 00 | 00 | 01 00 | 02 6869",
        pdu(0, 1, Body::ReplaceSm(rs)),
    );
}

#[test]
fn fixture_alert_notification() {
    let a = AlertNotification {
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: c("123"),
        esme_addr_ton: 1,
        esme_addr_npi: 1,
        esme_addr: c("456"),
        tlvs: tlvs(&[(tag::MS_AVAILABILITY_STATUS, &[0])]),
    };
    fixture(
        "00000021 00000102 00000000 00000001 | 01 01 31323300 | 01 01 34353600 | 0422 0001 00",
        pdu(0, 1, Body::AlertNotification(a)),
    );
}

// --- lenient decoding (documented in codec.rs) ----------------------------------------------

#[test]
fn error_responses_with_empty_body_decode_to_default_bodies() {
    let cases: &[(u32, Body)] = &[
        (0x8000_0004, Body::SubmitSmResp(SubmitSmResp::default())),
        (0x8000_0005, Body::DeliverSmResp(SubmitSmResp::default())),
        (0x8000_0009, Body::BindTransceiverResp(BindResp::default())),
        (0x8000_0002, Body::BindTransmitterResp(BindResp::default())),
        (0x8000_0001, Body::BindReceiverResp(BindResp::default())),
        (
            0x8000_0021,
            Body::SubmitMultiResp(SubmitMultiResp::default()),
        ),
        (0x8000_0103, Body::DataSmResp(DataSmResp::default())),
        (0x8000_0003, Body::QuerySmResp(QuerySmResp::default())),
    ];
    for (id, body) in cases {
        let mut wire = hex("00000010");
        wire.extend_from_slice(&id.to_be_bytes());
        wire.extend_from_slice(&ESME_RTHROTTLED.to_be_bytes());
        wire.extend_from_slice(&77u32.to_be_bytes());
        let (p, n) = decode(&wire, DEFAULT_MAX_PDU_LEN).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(
            p,
            pdu(ESME_RTHROTTLED, 77, body.clone()),
            "{}",
            command_name(*id)
        );
    }
}

#[test]
fn trailing_octets_after_a_tlv_less_body_are_ignored() {
    // A v5-speaking SMSC appends additional_status_info_text to a v3.4 submit_sm_resp.
    let (p, n) = decode(
        &hex("0000001c 80000004 00000000 00000001 | 61626300 | 001d 0003 6f6b00 | ff"),
        DEFAULT_MAX_PDU_LEN,
    )
    .unwrap()
    .unwrap();
    assert_eq!(n, 28);
    assert_eq!(
        p.body,
        Body::SubmitSmResp(SubmitSmResp {
            message_id: c("abc")
        })
    );
    let (p, _) = decode(
        &hex("00000012 00000015 00000000 00000001 | 0000"),
        DEFAULT_MAX_PDU_LEN,
    )
    .unwrap()
    .unwrap();
    assert_eq!(p.body, Body::EnquireLink);
}

#[test]
fn response_message_id_without_nul_at_end_of_body_is_accepted() {
    let (p, _) = decode(
        &hex("00000013 80000004 00000000 00000001 | 616263"),
        DEFAULT_MAX_PDU_LEN,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        p.body,
        Body::SubmitSmResp(SubmitSmResp {
            message_id: c("abc")
        })
    );
}

#[test]
fn time_fields_of_odd_length_are_accepted_on_decode_and_refused_on_encode() {
    // validity_period "12" (a shortened relative time some SMSCs send).
    let wire = hex("00000025 00000005 00000000 00000001 |
         00 | 00 00 3100 | 00 00 3200 | 00 00 00 | 00 | 313200 | 00 00 00 00 | 00");
    let (p, _) = decode(&wire, DEFAULT_MAX_PDU_LEN).unwrap().unwrap();
    let Body::DeliverSm(sm) = &p.body else {
        panic!("{p:?}")
    };
    assert_eq!(sm.validity_period.as_bytes(), b"12");
    assert_eq!(
        encode(&p, &mut Vec::new()),
        Err(EncodeError::TimeFormat {
            field: Field::ValidityPeriod,
            len: 2
        })
    );
}

// --- errors and what the session should answer ----------------------------------------------

#[test]
fn command_length_below_header_is_fatal_as_soon_as_4_octets_arrive() {
    let e = decode(&hex("0000000f"), DEFAULT_MAX_PDU_LEN).unwrap_err();
    assert!(e.is_fatal());
    assert_eq!(e.frame_len(), None);
    assert_eq!(e.sequence_number(), None);
    assert_eq!(e.command_status(), ESME_RINVCMDLEN);
    assert_eq!(e.answer_command_id(), Some(command_id::GENERIC_NACK));
    let e = decode_err("00000000 00000015 00000000 00000009");
    assert_eq!(e.sequence_number(), Some(9));
    assert!(e.is_fatal());
}

#[test]
fn command_length_above_max_is_fatal() {
    let e = decode(&hex("00010001"), DEFAULT_MAX_PDU_LEN).unwrap_err();
    assert_eq!(
        e,
        DecodeError::CommandLengthTooLarge {
            command_length: 0x10001,
            max: DEFAULT_MAX_PDU_LEN,
            sequence_number: None
        }
    );
    assert!(e.is_fatal());
    assert_eq!(e.command_status(), ESME_RINVCMDLEN);
    // Exactly the maximum is allowed (still incomplete here).
    assert_eq!(decode(&hex("00000020 00000015"), 32), Ok(None));
    assert!(decode(&hex("00000021 00000015"), 32).is_err());
}

#[test]
fn unknown_command_id_is_skippable_and_nacked() {
    let e = decode_err("00000014 00000099 00000000 0000000c | deadbeef");
    assert!(matches!(e, DecodeError::UnknownCommandId { .. }));
    assert!(!e.is_fatal());
    assert_eq!(e.frame_len(), Some(20));
    assert_eq!(e.sequence_number(), Some(12));
    assert_eq!(e.command_status(), ESME_RINVCMDID);
    assert_eq!(e.answer_command_id(), Some(command_id::GENERIC_NACK));
    assert_eq!(e.command_id(), Some(0x99));
}

#[test]
fn too_long_source_addr_names_the_field_and_gets_a_submit_sm_resp() {
    // 21 octets without a NUL: the field holds 20 + NUL.
    let e = decode_err(
        "0000002d 00000004 00000000 00000005 | 00 | 01 01 | 414141414141414141414141414141414141414141 | 00 00 00 00 00",
    );
    assert_eq!(
        e,
        DecodeError::Body {
            header: peek_header(&hex("0000002d 00000004 00000000 00000005")).unwrap(),
            field: Field::SourceAddr,
            kind: FieldError::CStringTooLong { max: 20 }
        }
    );
    assert_eq!(e.command_status(), ESME_RINVSRCADR);
    assert_eq!(e.answer_command_id(), Some(command_id::SUBMIT_SM_RESP));
    assert_eq!(e.frame_len(), Some(0x2d));
    assert!(e.to_string().contains("submit_sm: source_addr"), "{e}");
}

#[test]
fn truncated_body_names_the_first_missing_field() {
    // submit_sm that stops after destination_addr.
    let e = decode_err("00000017 00000004 00000000 00000001 | 00 | 00 00 00 | 00 00 00");
    assert!(
        matches!(
            e,
            DecodeError::Body {
                field: Field::EsmClass,
                kind: FieldError::Truncated,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.command_status(), ESME_RINVCMDLEN);
    // A request whose C-string runs into the end of the body: no leniency for requests.
    let e = decode_err("00000013 00000004 00000000 00000001 | 414243");
    assert!(
        matches!(
            e,
            DecodeError::Body {
                field: Field::ServiceType,
                kind: FieldError::MissingNul,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.command_status(), ESME_RINVSERTYP);
}

/// A deliver_sm with everything empty up to sm_length, then `tail`.
fn deliver_sm_with_tail(tail: &str) -> Vec<u8> {
    let mut wire = hex(
        "00000000 00000005 00000000 00000001 | 00 | 00 00 00 | 00 00 00 | 00 00 00 | 00 | 00 | 00 00 00 00",
    );
    wire.extend(hex(tail));
    let len = (wire.len() as u32).to_be_bytes();
    wire[..4].copy_from_slice(&len);
    wire
}

fn body_error(wire: &[u8]) -> (Field, FieldError, u32) {
    match decode(wire, DEFAULT_MAX_PDU_LEN) {
        Err(e @ DecodeError::Body { field, kind, .. }) => (field, kind, e.command_status()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn short_message_limits() {
    assert_eq!(
        body_error(&deliver_sm_with_tail(&format!("ff {}", "41".repeat(255)))),
        (
            Field::SmLength,
            FieldError::SmLengthTooLarge { sm_length: 255 },
            ESME_RINVMSGLEN
        )
    );
    assert_eq!(
        body_error(&deliver_sm_with_tail("0a 4142434445")),
        (
            Field::ShortMessage,
            FieldError::ShortMessageTruncated {
                sm_length: 10,
                available: 5
            },
            ESME_RINVMSGLEN
        )
    );
    // 254 is the maximum and is fine.
    let (p, _) = decode(
        &deliver_sm_with_tail(&format!("fe {}", "41".repeat(254))),
        DEFAULT_MAX_PDU_LEN,
    )
    .unwrap()
    .unwrap();
    let Body::DeliverSm(sm) = p.body else {
        panic!()
    };
    assert_eq!(sm.short_message.len(), 254);
}

#[test]
fn malformed_tlv_region() {
    assert_eq!(
        body_error(&deliver_sm_with_tail("00 | 0427 00")),
        (
            Field::Tlvs,
            FieldError::TlvHeaderTruncated { remaining: 3 },
            ESME_RINVOPTPARSTREAM
        )
    );
    assert_eq!(
        body_error(&deliver_sm_with_tail("00 | 001e 0005 3700")),
        (
            Field::Tlvs,
            FieldError::TlvValueTruncated {
                tag: 0x001e,
                len: 5,
                available: 2
            },
            ESME_RINVOPTPARSTREAM
        )
    );
    // message_state is one octet.
    assert_eq!(
        body_error(&deliver_sm_with_tail("00 | 0427 0002 0002")),
        (
            Field::Tlvs,
            FieldError::TlvLength {
                tag: 0x0427,
                len: 2,
                min: 1,
                max: 1
            },
            ESME_RINVPARLEN
        )
    );
    // receipted_message_id longer than 65.
    let long = format!("00 | 001e 0042 {}", "31".repeat(0x42));
    assert_eq!(body_error(&deliver_sm_with_tail(&long)).2, ESME_RINVPARLEN);
}

#[test]
fn submit_multi_dest_errors() {
    let e = decode_err("00000015 00000021 00000000 00000001 | 00 | 00 00 00 | 00");
    assert!(matches!(
        e,
        DecodeError::Body {
            kind: FieldError::NoDestinations,
            ..
        }
    ));
    assert_eq!(e.command_status(), ESME_RINVNUMDESTS);
    let e = decode_err("00000017 00000021 00000000 00000001 | 00 | 00 00 00 | 01 | 03 00");
    assert!(matches!(
        e,
        DecodeError::Body {
            kind: FieldError::InvalidDestFlag(3),
            ..
        }
    ));
    assert_eq!(e.command_status(), ESME_RINVDESTFLAG);
}

#[test]
fn malformed_response_is_not_answered() {
    // submit_sm_resp whose message_id overflows 65 octets.
    let mut wire = hex("00000000 80000004 00000000 00000003");
    wire.extend(std::iter::repeat_n(b'1', 70));
    let len = (wire.len() as u32).to_be_bytes();
    wire[..4].copy_from_slice(&len);
    let e = decode(&wire, DEFAULT_MAX_PDU_LEN).unwrap_err();
    assert_eq!(e.answer_command_id(), None);
    assert_eq!(e.sequence_number(), Some(3));
    assert_eq!(e.frame_len(), Some(wire.len()));
}

#[test]
fn a_stream_of_frames_decodes_in_order_and_skips_a_bad_one() {
    let mut stream = Vec::new();
    encode(&pdu(0, 1, Body::EnquireLink), &mut stream).unwrap();
    stream.extend(hex("00000014 00000099 00000000 00000002 | 01020304"));
    encode(&pdu(0, 3, Body::SubmitSm(submit_sm_example())), &mut stream).unwrap();
    let mut rest = &stream[..];
    let mut seen = Vec::new();
    while !rest.is_empty() {
        match decode(rest, DEFAULT_MAX_PDU_LEN) {
            Ok(Some((p, n))) => {
                seen.push(Ok(p.sequence_number));
                rest = &rest[n..];
            }
            Ok(None) => panic!("complete stream"),
            Err(e) => {
                seen.push(Err(e.sequence_number().unwrap()));
                rest = &rest[e.frame_len().unwrap()..];
            }
        }
    }
    assert_eq!(seen, vec![Ok(1), Err(2), Ok(3)]);
}

// --- encode validation -----------------------------------------------------------------------

#[test]
fn encode_refuses_what_the_types_cannot_and_leaves_out_untouched() {
    let mut out = b"keep".to_vec();
    let mut sm = submit_sm_example();
    sm.short_message = vec![b'x'; 255];
    assert_eq!(
        encode(&pdu(0, 1, Body::SubmitSm(sm.clone())), &mut out),
        Err(EncodeError::ShortMessageTooLong { len: 255 })
    );
    sm.short_message = b"x".to_vec();
    sm.tlvs.push(tag::MESSAGE_PAYLOAD, b"y").unwrap();
    assert_eq!(
        encode(&pdu(0, 1, Body::SubmitSm(sm.clone())), &mut out),
        Err(EncodeError::ShortMessageAndPayload)
    );
    sm.short_message.clear();
    assert!(encode(&pdu(0, 1, Body::SubmitSm(sm.clone())), &mut Vec::new()).is_ok());
    sm.tlvs = tlvs(&[(tag::MESSAGE_STATE, &[1, 2])]);
    assert_eq!(
        encode(&pdu(0, 1, Body::SubmitSm(sm.clone())), &mut out),
        Err(EncodeError::TlvLength {
            tag: tag::MESSAGE_STATE,
            len: 2,
            min: 1,
            max: 1
        })
    );
    sm.tlvs = Tlvs::new();
    sm.schedule_delivery_time = c("0000010000000001"); // 16 octets, bad last char
    assert!(matches!(
        encode(&pdu(0, 1, Body::SubmitSm(sm)), &mut out),
        Err(EncodeError::TimeFormat {
            field: Field::ScheduleDeliveryTime,
            len: 16
        })
    ));
    let multi = |n: usize| {
        Body::SubmitMulti(SubmitMulti {
            dest_addresses: vec![DestAddress::DistributionList(c("l")); n],
            ..Default::default()
        })
    };
    assert_eq!(
        encode(&pdu(0, 1, multi(0)), &mut out),
        Err(EncodeError::DestinationCount { count: 0 })
    );
    assert_eq!(
        encode(&pdu(0, 1, multi(256)), &mut out),
        Err(EncodeError::DestinationCount { count: 256 })
    );
    assert!(encode(&pdu(0, 1, multi(255)), &mut Vec::new()).is_ok());
    assert_eq!(out, b"keep");
}

#[test]
fn encode_does_not_allocate_with_capacity() {
    let p = pdu(0, 1, Body::SubmitSm(submit_sm_example()));
    let mut out = Vec::with_capacity(encoded_len(&p));
    let before = out.as_ptr();
    encode(&p, &mut out).unwrap();
    assert_eq!(
        out.as_ptr(),
        before,
        "encode reallocated a buffer that had room"
    );
    assert_eq!(out.len(), encoded_len(&p));
}

// --- property tests --------------------------------------------------------------------------

fn any_coctet<const N: usize>() -> impl Strategy<Value = COctet<N>> {
    proptest::collection::vec(1u8..=255, 0..N).prop_map(|v| COctet::new(&v).unwrap())
}

fn any_time() -> impl Strategy<Value = Time17> {
    prop_oneof![
        Just(COctet::empty()),
        ("[0-9]{15}", prop_oneof![Just('+'), Just('-'), Just('R')])
            .prop_map(|(d, s)| COctet::new(format!("{d}{s}").as_bytes()).unwrap()),
    ]
}

/// TLVs that pass the length table: known fixed-size tags with right-sized values, plus
/// unknown vendor tags with arbitrary values (message_payload left out: it excludes
/// short_message, and is covered by data_sm).
fn any_tlvs() -> impl Strategy<Value = Tlvs> {
    let one = prop_oneof![
        (
            prop_oneof![
                Just(tag::MESSAGE_STATE),
                Just(tag::SAR_TOTAL_SEGMENTS),
                Just(tag::USER_RESPONSE_CODE)
            ],
            proptest::collection::vec(any::<u8>(), 1)
        ),
        (
            prop_oneof![Just(tag::SAR_MSG_REF_NUM), Just(tag::SOURCE_PORT)],
            proptest::collection::vec(any::<u8>(), 2)
        ),
        (
            Just(tag::NETWORK_ERROR_CODE),
            proptest::collection::vec(any::<u8>(), 3)
        ),
        (
            Just(tag::RECEIPTED_MESSAGE_ID),
            proptest::collection::vec(any::<u8>(), 0..=65)
        ),
        (
            0x1400u16..0x14ff,
            proptest::collection::vec(any::<u8>(), 0..20)
        ),
    ];
    proptest::collection::vec(one, 0..4).prop_map(|items: Vec<(u16, Vec<u8>)>| {
        let mut t = Tlvs::new();
        for (tlv_tag, value) in &items {
            t.push(*tlv_tag, value).unwrap();
        }
        t
    })
}

fn any_sm_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=254)
}

prop_compose! {
    fn any_submit_sm()(
        service_type in any_coctet::<6>(),
        st in any::<(u8, u8)>(),
        source_addr in any_coctet::<21>(),
        dt in any::<(u8, u8)>(),
        destination_addr in any_coctet::<21>(),
        f1 in any::<(u8, u8, u8)>(),
        schedule_delivery_time in any_time(),
        validity_period in any_time(),
        f2 in any::<(u8, u8, u8, u8)>(),
        short_message in any_sm_text(),
        tlvs in any_tlvs(),
    ) -> SubmitSm {
        SubmitSm {
            service_type, source_addr_ton: st.0, source_addr_npi: st.1, source_addr,
            dest_addr_ton: dt.0, dest_addr_npi: dt.1, destination_addr,
            esm_class: f1.0, protocol_id: f1.1, priority_flag: f1.2,
            schedule_delivery_time, validity_period,
            registered_delivery: f2.0, replace_if_present_flag: f2.1, data_coding: f2.2,
            sm_default_msg_id: f2.3, short_message, tlvs,
        }
    }
}

prop_compose! {
    fn any_bind()(
        system_id in any_coctet::<16>(),
        password in any_coctet::<9>(),
        system_type in any_coctet::<13>(),
        f in any::<(u8, u8, u8)>(),
        address_range in any_coctet::<41>(),
    ) -> Bind {
        Bind { system_id, password, system_type, interface_version: f.0, addr_ton: f.1,
               addr_npi: f.2, address_range }
    }
}

fn any_bind_resp() -> impl Strategy<Value = BindResp> {
    (any_coctet::<16>(), any_tlvs()).prop_map(|(system_id, tlvs)| BindResp { system_id, tlvs })
}

fn any_sm_resp() -> impl Strategy<Value = SubmitSmResp> {
    any_coctet::<65>().prop_map(|message_id| SubmitSmResp { message_id })
}

fn any_dest() -> impl Strategy<Value = DestAddress> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), any_coctet::<21>())
            .prop_map(|(ton, npi, addr)| DestAddress::Sme { ton, npi, addr }),
        any_coctet::<21>().prop_map(DestAddress::DistributionList),
    ]
}

fn any_submit_multi() -> impl Strategy<Value = SubmitMulti> {
    (
        any_submit_sm(),
        proptest::collection::vec(any_dest(), 1..=12),
    )
        .prop_map(|(s, dest_addresses)| SubmitMulti {
            service_type: s.service_type,
            source_addr_ton: s.source_addr_ton,
            source_addr_npi: s.source_addr_npi,
            source_addr: s.source_addr,
            dest_addresses,
            esm_class: s.esm_class,
            protocol_id: s.protocol_id,
            priority_flag: s.priority_flag,
            schedule_delivery_time: s.schedule_delivery_time,
            validity_period: s.validity_period,
            registered_delivery: s.registered_delivery,
            replace_if_present_flag: s.replace_if_present_flag,
            data_coding: s.data_coding,
            sm_default_msg_id: s.sm_default_msg_id,
            short_message: s.short_message,
            tlvs: s.tlvs,
        })
}

fn any_submit_multi_resp() -> impl Strategy<Value = SubmitMultiResp> {
    (
        any_coctet::<65>(),
        proptest::collection::vec(
            (any::<(u8, u8)>(), any_coctet::<21>(), any::<u32>()).prop_map(|(t, addr, code)| {
                UnsuccessSme {
                    ton: t.0,
                    npi: t.1,
                    addr,
                    error_status_code: code,
                }
            }),
            0..8,
        ),
    )
        .prop_map(|(message_id, unsuccess_smes)| SubmitMultiResp {
            message_id,
            unsuccess_smes,
        })
}

fn any_data_sm() -> impl Strategy<Value = DataSm> {
    (
        any_coctet::<6>(),
        any::<(u8, u8, u8, u8, u8, u8, u8)>(),
        any_coctet::<65>(),
        any_coctet::<65>(),
        any_tlvs(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(
            |(service_type, f, source_addr, destination_addr, mut tlvs, payload)| {
                if let Some(p) = payload {
                    tlvs.push(tag::MESSAGE_PAYLOAD, &p).unwrap();
                }
                DataSm {
                    service_type,
                    source_addr_ton: f.0,
                    source_addr_npi: f.1,
                    source_addr,
                    dest_addr_ton: f.2,
                    dest_addr_npi: f.3,
                    destination_addr,
                    esm_class: f.4,
                    registered_delivery: f.5,
                    data_coding: f.6,
                    tlvs,
                }
            },
        )
}

fn any_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::GenericNack),
        Just(Body::Unbind),
        Just(Body::UnbindResp),
        Just(Body::EnquireLink),
        Just(Body::EnquireLinkResp),
        Just(Body::CancelSmResp),
        Just(Body::ReplaceSmResp),
        any_bind().prop_map(Body::BindReceiver),
        any_bind().prop_map(Body::BindTransmitter),
        any_bind().prop_map(Body::BindTransceiver),
        any_bind_resp().prop_map(Body::BindReceiverResp),
        any_bind_resp().prop_map(Body::BindTransmitterResp),
        any_bind_resp().prop_map(Body::BindTransceiverResp),
        (any_coctet::<16>(), any_coctet::<9>()).prop_map(|(system_id, password)| Body::Outbind(
            Outbind {
                system_id,
                password
            }
        )),
        any_submit_sm().prop_map(Body::SubmitSm),
        any_submit_sm().prop_map(Body::DeliverSm),
        any_sm_resp().prop_map(Body::SubmitSmResp),
        any_sm_resp().prop_map(Body::DeliverSmResp),
        any_submit_multi().prop_map(Body::SubmitMulti),
        any_submit_multi_resp().prop_map(Body::SubmitMultiResp),
        any_data_sm().prop_map(Body::DataSm),
        (any_coctet::<65>(), any_tlvs())
            .prop_map(|(message_id, tlvs)| Body::DataSmResp(DataSmResp { message_id, tlvs })),
        (any_coctet::<65>(), any::<(u8, u8)>(), any_coctet::<21>()).prop_map(|(m, t, a)| {
            Body::QuerySm(QuerySm {
                message_id: m,
                source_addr_ton: t.0,
                source_addr_npi: t.1,
                source_addr: a,
            })
        }),
        (any_coctet::<65>(), any_time(), any::<(u8, u8)>()).prop_map(|(m, d, s)| {
            Body::QuerySmResp(QuerySmResp {
                message_id: m,
                final_date: d,
                message_state: s.0,
                error_code: s.1,
            })
        }),
        (
            any_coctet::<6>(),
            any_coctet::<65>(),
            any::<(u8, u8, u8, u8)>(),
            any_coctet::<21>(),
            any_coctet::<21>()
        )
            .prop_map(|(st, m, t, s, d)| Body::CancelSm(CancelSm {
                service_type: st,
                message_id: m,
                source_addr_ton: t.0,
                source_addr_npi: t.1,
                source_addr: s,
                dest_addr_ton: t.2,
                dest_addr_npi: t.3,
                destination_addr: d,
            })),
        (
            any_coctet::<65>(),
            any::<(u8, u8, u8, u8)>(),
            any_coctet::<21>(),
            any_time(),
            any_time(),
            any_sm_text()
        )
            .prop_map(|(m, f, a, s, v, text)| Body::ReplaceSm(ReplaceSm {
                message_id: m,
                source_addr_ton: f.0,
                source_addr_npi: f.1,
                source_addr: a,
                schedule_delivery_time: s,
                validity_period: v,
                registered_delivery: f.2,
                sm_default_msg_id: f.3,
                short_message: text,
            })),
        (
            any::<(u8, u8, u8, u8)>(),
            any_coctet::<65>(),
            any_coctet::<65>(),
            any_tlvs()
        )
            .prop_map(
                |(f, s, e, tlvs)| Body::AlertNotification(AlertNotification {
                    source_addr_ton: f.0,
                    source_addr_npi: f.1,
                    source_addr: s,
                    esme_addr_ton: f.2,
                    esme_addr_npi: f.3,
                    esme_addr: e,
                    tlvs,
                })
            ),
    ]
}

fn any_pdu() -> impl Strategy<Value = Pdu> {
    (any::<u32>(), any::<u32>(), any_body()).prop_map(|(s, q, b)| pdu(s, q, b))
}

/// Decode must never panic, and its answer must be internally consistent.
fn check_decode_contract(buf: &[u8], max: usize) {
    match decode(buf, max) {
        Ok(None) => {}
        Ok(Some((p, n))) => {
            assert!((HEADER_LEN..=buf.len().min(max)).contains(&n));
            // Whatever we accept, we can re-encode or refuse precisely; if we re-encode,
            // it reads back the same.
            let mut out = Vec::new();
            if encode(&p, &mut out).is_ok() {
                let (again, m) = decode(&out, usize::MAX).unwrap().unwrap();
                assert_eq!(again, p);
                assert_eq!(m, out.len());
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.command_status();
            if let Some(n) = e.frame_len() {
                assert!((HEADER_LEN..=buf.len().min(max)).contains(&n));
                assert!(e.sequence_number().is_some());
            }
            assert_eq!(e.is_fatal(), e.frame_len().is_none());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_every_body(p in any_pdu()) {
        let mut out = Vec::new();
        encode(&p, &mut out).unwrap();
        prop_assert_eq!(out.len(), encoded_len(&p));
        let (back, n) = decode(&out, usize::MAX).unwrap().unwrap();
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(back, p);
    }

    #[test]
    fn every_prefix_of_a_valid_frame_is_incomplete(p in any_pdu()) {
        let mut out = Vec::new();
        encode(&p, &mut out).unwrap();
        for n in 0..out.len() {
            prop_assert_eq!(decode(&out[..n], usize::MAX), Ok(None));
        }
        // And a frame followed by the start of the next one decodes just the first.
        out.extend_from_slice(&[0, 0, 0]);
        let (_, used) = decode(&out, usize::MAX).unwrap().unwrap();
        prop_assert_eq!(used, out.len() - 3);
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_decode_contract(&buf, DEFAULT_MAX_PDU_LEN);
    }

    /// Random bytes rarely form a plausible header; mutating valid frames reaches the body
    /// parsers. command_length is re-patched half the time so the mutation lands in a body.
    #[test]
    fn mutated_frames_never_panic(
        p in any_pdu(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        fix_len in any::<bool>(),
    ) {
        let mut buf = Vec::new();
        encode(&p, &mut buf).unwrap();
        for (at, v) in edits {
            let i = at % buf.len();
            buf[i] = v;
        }
        if fix_len {
            buf.truncate(HEADER_LEN.max(cut % (buf.len() + 1)));
            let len = (buf.len() as u32).to_be_bytes();
            buf[..4].copy_from_slice(&len);
        }
        check_decode_contract(&buf, DEFAULT_MAX_PDU_LEN);
        check_decode_contract(&buf, 64);
    }
}

#[test]
fn every_standard_tlv_tag_has_length_bounds() {
    use super::super::tlv::value_len_bounds;
    use tag::*;
    let all = [
        DEST_ADDR_SUBUNIT,
        DEST_NETWORK_TYPE,
        DEST_BEARER_TYPE,
        DEST_TELEMATICS_ID,
        SOURCE_ADDR_SUBUNIT,
        SOURCE_NETWORK_TYPE,
        SOURCE_BEARER_TYPE,
        SOURCE_TELEMATICS_ID,
        QOS_TIME_TO_LIVE,
        PAYLOAD_TYPE,
        ADDITIONAL_STATUS_INFO_TEXT,
        RECEIPTED_MESSAGE_ID,
        MS_MSG_WAIT_FACILITIES,
        PRIVACY_INDICATOR,
        SOURCE_SUBADDRESS,
        DEST_SUBADDRESS,
        USER_MESSAGE_REFERENCE,
        USER_RESPONSE_CODE,
        SOURCE_PORT,
        DESTINATION_PORT,
        SAR_MSG_REF_NUM,
        LANGUAGE_INDICATOR,
        SAR_TOTAL_SEGMENTS,
        SAR_SEGMENT_SEQNUM,
        SC_INTERFACE_VERSION,
        CALLBACK_NUM_PRES_IND,
        CALLBACK_NUM_ATAG,
        NUMBER_OF_MESSAGES,
        CALLBACK_NUM,
        DPF_RESULT,
        SET_DPF,
        MS_AVAILABILITY_STATUS,
        NETWORK_ERROR_CODE,
        MESSAGE_PAYLOAD,
        DELIVERY_FAILURE_REASON,
        MORE_MESSAGES_TO_SEND,
        MESSAGE_STATE,
        USSD_SERVICE_OP,
        DISPLAY_TIME,
        SMS_SIGNAL,
        MS_VALIDITY,
        ALERT_ON_MESSAGE_DELIVERY,
        ITS_REPLY_TYPE,
        ITS_SESSION_INFO,
    ];
    for t in all {
        let (min, max) = value_len_bounds(t).unwrap_or_else(|| panic!("0x{t:04X} unchecked"));
        assert!(min <= max, "0x{t:04X}");
    }
    // Spot checks against the spec table (5.3.2).
    assert_eq!(value_len_bounds(MESSAGE_STATE), Some((1, 1)));
    assert_eq!(value_len_bounds(NETWORK_ERROR_CODE), Some((3, 3)));
    assert_eq!(value_len_bounds(QOS_TIME_TO_LIVE), Some((4, 4)));
    assert_eq!(value_len_bounds(SAR_MSG_REF_NUM), Some((2, 2)));
    assert_eq!(value_len_bounds(RECEIPTED_MESSAGE_ID), Some((0, 65)));
    assert_eq!(
        value_len_bounds(0x1400),
        None,
        "vendor tags are not checked"
    );
}

#[test]
fn every_command_id_has_a_name_and_a_decoder() {
    use command_id::*;
    let all = [
        GENERIC_NACK,
        BIND_RECEIVER,
        BIND_RECEIVER_RESP,
        BIND_TRANSMITTER,
        BIND_TRANSMITTER_RESP,
        QUERY_SM,
        QUERY_SM_RESP,
        SUBMIT_SM,
        SUBMIT_SM_RESP,
        DELIVER_SM,
        DELIVER_SM_RESP,
        UNBIND,
        UNBIND_RESP,
        REPLACE_SM,
        REPLACE_SM_RESP,
        CANCEL_SM,
        CANCEL_SM_RESP,
        BIND_TRANSCEIVER,
        BIND_TRANSCEIVER_RESP,
        OUTBIND,
        ENQUIRE_LINK,
        ENQUIRE_LINK_RESP,
        SUBMIT_MULTI,
        SUBMIT_MULTI_RESP,
        ALERT_NOTIFICATION,
        DATA_SM,
        DATA_SM_RESP,
    ];
    for id in all {
        assert_ne!(command_name(id), "unknown", "0x{id:08X}");
        // A header-only frame is either a valid PDU or a body error, never "unknown command".
        let mut wire = hex("00000010");
        wire.extend_from_slice(&id.to_be_bytes());
        wire.extend_from_slice(&[0; 8]);
        match decode(&wire, DEFAULT_MAX_PDU_LEN) {
            Ok(Some((p, 16))) => assert_eq!(p.body.command_id(), id),
            Err(DecodeError::Body { .. }) => assert!(!command_id::is_response(id)),
            other => panic!("0x{id:08X}: {other:?}"),
        }
    }
    assert_eq!(command_name(0x0000_0099), "unknown");
}

#[test]
fn requests_without_a_response_pdu_are_nacked() {
    // outbind whose password has no NUL: outbind has no *_resp, so generic_nack answers it.
    let e = decode_err("0000001c 0000000b 00000000 00000004 | 534d534300 | 70707070707070");
    assert_eq!(e.answer_command_id(), Some(command_id::GENERIC_NACK));
    assert_eq!(e.command_status(), ESME_RINVPASWD);
    // A bad bind gets a bind_*_resp naming the problem, so the peer sees why.
    let e = decode_err(&format!(
        "00000027 00000002 00000000 00000001 | {} | 00 | 00 | 34 00 00 | 00",
        "41".repeat(17)
    ));
    assert_eq!(
        e.answer_command_id(),
        Some(command_id::BIND_TRANSMITTER_RESP)
    );
    assert_eq!(e.command_status(), ESME_RINVSYSID);
}
