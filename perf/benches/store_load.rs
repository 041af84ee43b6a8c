//! Shared by the `state`, `handed` and `state_engines` benches: one message's store life and
//! the client threads (monoio, like the shards) that drive many of them through a store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smsgw::state::{
    CreateOutcome, Encoding, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome,
    StateStore, Status, UpdateOutcome, unix_ms,
};

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn record(app: u64, i: usize) -> MessageRecord {
    MessageRecord::new_accepted(
        MessageKey::new(app, format!("bench-{i:012}")),
        1,
        "SmsGw",
        "+4512345678",
        Encoding::Gsm7,
        "Your verification code is 123456. It expires in 10 minutes.",
        1,
        unix_ms(),
    )
}

/// One message's life, each write awaited in turn as the pipeline does: create, the hand-over
/// mark (if `mark`: the pipeline's slow path, a message that waited for window room), submitted
/// (with the receipt index), receipt. Returns false on any unexpected outcome.
pub async fn one_message(s: &dyn StateStore, app: u64, i: usize, mark: bool) -> bool {
    let r = record(app, i);
    let key = r.key();
    match s.create(r).await {
        Ok(CreateOutcome::Created(_)) => {}
        other => {
            eprintln!("create: {other:?}");
            return false;
        }
    }
    if mark {
        let handed = s
            .update(key.clone(), vec![PartUpdate::Handed], unix_ms())
            .await;
        if !matches!(handed, Ok(UpdateOutcome::Updated { changed: true, .. })) {
            eprintln!("handed: {handed:?}");
            return false;
        }
    }
    let smsc_id = format!("{app:x}-{i:x}");
    let up = s
        .update(
            key,
            vec![PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: smsc_id.clone(),
            }],
            unix_ms(),
        )
        .await;
    if !matches!(up, Ok(UpdateOutcome::Updated { changed: true, .. })) {
        eprintln!("update: {up:?}");
        return false;
    }
    let rc = ReceiptInfo {
        status: Status::Delivered,
        stat: "DELIVRD".into(),
        err: Some("000".into()),
        done_at_ms: Some(unix_ms()),
        received_at_ms: unix_ms(),
    };
    match s.apply_receipt(1, smsc_id, rc).await {
        Ok(ReceiptOutcome::Applied(_)) => true,
        other => {
            eprintln!("receipt: {other:?}");
            false
        }
    }
}

/// `n` messages from `clients` threads (one monoio runtime each), `inflight` at a time per
/// client, bounded by a 60 s deadline. Returns (messages done, failed, elapsed).
pub fn drive<S: StateStore>(
    store: &Arc<S>,
    n: usize,
    clients: usize,
    inflight: usize,
    mark: bool,
) -> (usize, usize, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let per_client = n / clients;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let store: Arc<dyn StateStore> = store.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio");
                // As on the gateway's shards: the journal engine's log writes batch per turn.
                smsgw::state::wal::set_thread_turn_deferrer(Some(
                    smsgw::state::wal::monoio_turn_deferrer,
                ));
                rt.block_on(async move {
                    // `inflight` tasks each take every inflight-th message of this client.
                    let tasks: Vec<_> = (0..inflight)
                        .map(|t| {
                            let store = store.clone();
                            monoio::spawn(async move {
                                let (mut done, mut failed) = (0usize, 0usize);
                                let mut i = t;
                                while i < per_client && Instant::now() < deadline {
                                    if one_message(&*store, c as u64, i, mark).await {
                                        done += 1;
                                    } else {
                                        failed += 1;
                                    }
                                    i += inflight;
                                }
                                (done, failed)
                            })
                        })
                        .collect();
                    let (mut done, mut failed) = (0, 0);
                    for t in tasks {
                        let (d, f) = t.await;
                        done += d;
                        failed += f;
                    }
                    (done, failed)
                })
            })
        })
        .collect();
    let (mut msgs, mut failed) = (0, 0);
    for h in handles {
        let (d, f) = h.join().expect("client thread");
        msgs += d;
        failed += f;
    }
    (msgs, failed, t0.elapsed())
}
