//! Feeds arbitrary bytes to the SMPP codec as a stream of frames, the way a session reads
//! them, and checks the codec's contract (not just "no panic"):
//! - a decoded frame's length is within the buffer and the cap;
//! - a non-fatal error names a frame boundary within the buffer, so skipping it progresses;
//! - whatever decodes either re-encodes and reads back identically, or is refused by
//!   `encode` with a precise error (decode is lenient about a few things encode is not).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smsgw::smpp::pdu::{HEADER_LEN, decode, encode, encoded_len};

/// Small enough that the fuzzer reaches the length checks, large enough for real bodies.
const MAX_PDU_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    // Bounded: each iteration consumes at least HEADER_LEN octets or stops.
    while !rest.is_empty() {
        match decode(rest, MAX_PDU_LEN) {
            Ok(None) => break,
            Ok(Some((pdu, used))) => {
                assert!((HEADER_LEN..=rest.len().min(MAX_PDU_LEN)).contains(&used));
                out.clear();
                if encode(&pdu, &mut out).is_ok() {
                    assert_eq!(out.len(), encoded_len(&pdu));
                    let (again, n) = decode(&out, usize::MAX)
                        .expect("re-encoded PDU decodes")
                        .expect("re-encoded PDU is complete");
                    assert_eq!(n, out.len());
                    assert_eq!(again, pdu);
                }
                rest = &rest[used..];
            }
            Err(e) => {
                let _ = (e.to_string(), e.command_status(), e.answer_command_id());
                match e.frame_len() {
                    Some(n) => {
                        assert!((HEADER_LEN..=rest.len()).contains(&n));
                        assert!(e.sequence_number().is_some());
                        rest = &rest[n..];
                    }
                    None => {
                        assert!(e.is_fatal());
                        break;
                    }
                }
            }
        }
    }
});
