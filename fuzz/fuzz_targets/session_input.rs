//! Feeds arbitrary bytes, split at fuzzer-chosen points and interleaved with clock ticks,
//! to an ESME session that has sent its bind, and drains everything it wants to say. The
//! session must not panic and must keep its bounded queues bounded whatever the peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smsgw::smpp::session::{BindMode, Session, SessionConfig};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let cfg = SessionConfig::new(BindMode::Transceiver, "fuzz", "pw").expect("valid config");
    let mut now = Instant::now();
    let mut session = Session::new(cfg, now);
    session.bind(now);
    let mut out = Vec::new();
    // Chunks of 1..=256 octets: exercises reassembly of frames split across reads.
    let chunk = split as usize + 1;
    for piece in data.chunks(chunk) {
        session.handle_input(piece, now);
        now += Duration::from_millis(u64::from(piece[0]) * 10);
        session.handle_timeout(now);
        out.clear();
        session.poll_transmit(&mut out);
        while session.poll_event().is_some() {}
        if session.is_closed() {
            break;
        }
    }
});
