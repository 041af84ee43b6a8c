//! The conformance suite every [`StateStore`] backend must pass: one test body, many backends.
//!
//! It only uses the trait, awaits with whatever runtime calls it (the embedded backend's tests
//! run it on monoio to prove the futures need no tokio), and scopes every id with a random
//! run prefix so it can run against a shared, persistent server (Aerospike) repeatedly.
//!
//! It panics with a message on the first failed check (it is test code).

use std::sync::Arc;
use std::time::Duration;

use super::{
    CreateOutcome, Encoding, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome,
    ScanCursor, StateError, StateStore, Status, UpdateOutcome, unix_ms,
};

/// What the suite needs from a backend besides the trait.
pub trait SuiteHarness {
    /// Opens the backend on the same underlying storage with the given TTL. The suite drops
    /// every handle it got before calling `open` again (embedded stores lock their directory).
    fn open(&self, ttl_secs: u64) -> Arc<dyn StateStore>;
}

/// Awaits `f` on a fresh monoio runtime (the shards' runtime), as the backends' tests do: a
/// store future must not need the runtime (or thread) that completes it.
pub fn monoio_block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(f)
}

/// Awaits `f` on a fresh current-thread tokio runtime (the side runtime's kind).
pub fn tokio_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// TTL used for everything except the expiry check.
pub const SUITE_TTL_SECS: u64 = 3600;

struct Ids {
    app: u64,
    prefix: String,
    link: u32,
}

impl Ids {
    fn new() -> Ids {
        Ids {
            // Keep app ids away from 0 (the default app) and from each other across runs.
            app: fastrand::u64(1 << 40..1 << 50),
            prefix: format!("suite-{:016x}", fastrand::u64(..)),
            link: fastrand::u32(1_000_000..2_000_000),
        }
    }

    fn key(&self, name: &str) -> MessageKey {
        MessageKey::new(self.app, format!("{}-{name}", self.prefix))
    }

    fn smsc(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn record(&self, name: &str, parts: u16) -> MessageRecord {
        MessageRecord::new_accepted(
            self.key(name),
            7,
            "Sender",
            "+4512345678",
            Encoding::Gsm7,
            format!("text of {name}"),
            parts,
            unix_ms(),
        )
    }
}

fn receipt(status: Status) -> ReceiptInfo {
    ReceiptInfo {
        status,
        stat: match status {
            Status::Delivered => "DELIVRD",
            Status::Undeliverable => "UNDELIV",
            Status::Expired => "EXPIRED",
            Status::Rejected => "REJECTD",
            _ => "ENROUTE",
        }
        .into(),
        err: Some("000".into()),
        done_at_ms: Some(unix_ms()),
        received_at_ms: unix_ms(),
    }
}

async fn created(s: &dyn StateStore, r: MessageRecord) -> MessageRecord {
    match s.create(r).await {
        Ok(CreateOutcome::Created(r)) => r,
        other => panic!("create: expected Created, got {other:?}"),
    }
}

async fn updated(s: &dyn StateStore, k: &MessageKey, u: Vec<PartUpdate>) -> (MessageRecord, bool) {
    match s.update(k.clone(), u, unix_ms()).await {
        Ok(UpdateOutcome::Updated { record, changed }) => (record, changed),
        other => panic!("update {k:?}: {other:?}"),
    }
}

fn submitted(index: u16, link_id: u32, id: &str) -> PartUpdate {
    PartUpdate::Submitted {
        index,
        link_id,
        smsc_message_id: id.to_string(),
    }
}

/// Runs every check. Takes a few seconds (the expiry check waits for a 1 s TTL to pass).
pub async fn run_all(h: &dyn SuiteHarness) {
    let ids = Ids::new();
    {
        let s = h.open(SUITE_TTL_SECS);
        create_and_get(&*s, &ids).await;
        idempotency(&*s, &ids).await;
        forward_only(&*s, &ids).await;
        multipart(&*s, &ids).await;
        receipts(&*s, &ids).await;
        invalid_input(&*s, &ids).await;
        handed_mark(&*s, &ids).await;
        before_reopen(&*s, &ids).await;
        s.flush().await.expect("flush");
    }
    {
        let s = h.open(SUITE_TTL_SECS);
        after_reopen(&*s, &ids).await;
        expire_due(&*s, &ids).await;
    }
    {
        let s = h.open(1);
        expiry_hides(&*s, &ids).await;
    }
}

async fn create_and_get(s: &dyn StateStore, ids: &Ids) {
    let before = unix_ms();
    let r = created(s, ids.record("cg", 1)).await;
    assert!(
        r.expires_at_ms >= before + SUITE_TTL_SECS * 1000 - 5_000
            && r.expires_at_ms <= unix_ms() + SUITE_TTL_SECS * 1000 + 5_000,
        "expires_at_ms {} not now+ttl",
        r.expires_at_ms
    );
    assert_eq!(r.status, Status::Accepted);
    let got = s.get(ids.key("cg")).await.expect("get");
    assert_eq!(got.as_ref(), Some(&r), "get returns what create stored");
    assert_eq!(s.get(ids.key("missing")).await.expect("get"), None);
    let other_app = MessageKey::new(ids.app + 1, ids.key("cg").transaction_id);
    assert_eq!(
        s.get(other_app).await.expect("get"),
        None,
        "keys are per app"
    );
}

async fn idempotency(s: &dyn StateStore, ids: &Ids) {
    let first = created(s, ids.record("idem", 1)).await;
    let mut again = ids.record("idem", 2);
    again.text = Some("different".into());
    match s.create(again).await.expect("create") {
        CreateOutcome::Exists(r) => assert_eq!(r, first, "stored outcome returned unchanged"),
        other => panic!("repeated id must not be stored again: {other:?}"),
    }
    // Same transaction id, another app: a different message.
    let mut other = ids.record("idem", 1);
    other.app_id = ids.app + 1;
    created(s, other).await;
    // Two concurrent creates of one id: exactly one wins.
    let a = s.create(ids.record("race", 1));
    let b = s.create(ids.record("race", 1));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    let wins = [&a, &b]
        .iter()
        .filter(|o| matches!(o, CreateOutcome::Created(_)))
        .count();
    assert_eq!(wins, 1, "concurrent duplicate creates: {a:?} / {b:?}");
}

async fn forward_only(s: &dyn StateStore, ids: &Ids) {
    let k = ids.key("fwd");
    created(s, ids.record("fwd", 1)).await;
    let (r, changed) = updated(s, &k, vec![submitted(0, ids.link, &ids.smsc("fwd"))]).await;
    assert!(changed);
    assert_eq!(r.status, Status::Submitted);
    assert_eq!(
        r.parts[0].smsc_message_id.as_deref(),
        Some(&*ids.smsc("fwd"))
    );
    assert_eq!(r.link_id, Some(ids.link));
    assert_eq!(r.text, None, "text dropped once submitted");
    // Repeating the submit is a no-op.
    let (_, changed) = updated(s, &k, vec![submitted(0, ids.link, &ids.smsc("fwd"))]).await;
    assert!(!changed);
    match s
        .apply_receipt(ids.link, ids.smsc("fwd"), receipt(Status::Delivered))
        .await
        .expect("receipt")
    {
        ReceiptOutcome::Applied(r) => assert_eq!(r.status, Status::Delivered),
        other => panic!("receipt: {other:?}"),
    }
    // Final is final: neither a later failure nor a different receipt changes it.
    let (r, changed) = updated(
        s,
        &k,
        vec![PartUpdate::Final {
            index: 0,
            status: Status::Failed,
            error_code: Some(1),
        }],
    )
    .await;
    assert!(!changed);
    assert_eq!(r.status, Status::Delivered);
    assert_eq!(
        s.apply_receipt(ids.link, ids.smsc("fwd"), receipt(Status::Undeliverable))
            .await
            .expect("receipt"),
        ReceiptOutcome::Duplicate
    );
    let got = s.get(k.clone()).await.expect("get").expect("present");
    assert_eq!(got.status, Status::Delivered);
    assert_eq!(got.parts[0].status, Status::Delivered);
    assert_eq!(
        got.parts[0].receipt.as_ref().map(|r| r.stat.as_str()),
        Some("DELIVRD")
    );
    // Unknown key.
    assert_eq!(
        s.update(ids.key("nope"), vec![], unix_ms()).await,
        Ok(UpdateOutcome::NotFound)
    );
    // Rejected before submission: whole message final.
    let k2 = ids.key("rej");
    created(s, ids.record("rej", 2)).await;
    let (r, _) = updated(
        s,
        &k2,
        vec![PartUpdate::AllPending {
            status: Status::Rejected,
            error_code: Some(0x45),
        }],
    )
    .await;
    assert_eq!(r.status, Status::Rejected);
    assert!(r.parts.iter().all(|p| p.error_code == Some(0x45)));
}

async fn multipart(s: &dyn StateStore, ids: &Ids) {
    let k = ids.key("multi");
    created(s, ids.record("multi", 3)).await;
    // Parts are submitted one by one; the message is Accepted until every part is.
    let (r, _) = updated(s, &k, vec![submitted(0, ids.link, &ids.smsc("m0"))]).await;
    assert_eq!(r.status, Status::Accepted);
    assert!(r.text.is_some(), "text kept while parts remain to submit");
    let (r, _) = updated(
        s,
        &k,
        vec![
            submitted(1, ids.link, &ids.smsc("m1")),
            submitted(2, ids.link, &ids.smsc("m2")),
        ],
    )
    .await;
    assert_eq!(r.status, Status::Submitted);
    for (i, name) in ["m0", "m1"].iter().enumerate() {
        match s
            .apply_receipt(ids.link, ids.smsc(name), receipt(Status::Delivered))
            .await
            .expect("receipt")
        {
            ReceiptOutcome::Applied(r) => {
                assert_eq!(r.parts[i].status, Status::Delivered);
                assert_eq!(r.status, Status::Submitted, "not all parts delivered yet");
            }
            other => panic!("receipt {name}: {other:?}"),
        }
    }
    match s
        .apply_receipt(ids.link, ids.smsc("m2"), receipt(Status::Delivered))
        .await
        .expect("receipt")
    {
        ReceiptOutcome::Applied(r) => assert_eq!(r.status, Status::Delivered),
        other => panic!("receipt m2: {other:?}"),
    }
    // Mixed: one part undeliverable, one delivered → the failing status.
    let k = ids.key("mixed");
    created(s, ids.record("mixed", 2)).await;
    updated(
        s,
        &k,
        vec![
            submitted(0, ids.link, &ids.smsc("x0")),
            submitted(1, ids.link, &ids.smsc("x1")),
        ],
    )
    .await;
    s.apply_receipt(ids.link, ids.smsc("x0"), receipt(Status::Undeliverable))
        .await
        .expect("receipt");
    let r = s.get(k.clone()).await.expect("get").expect("present");
    assert_eq!(r.status, Status::Submitted);
    s.apply_receipt(ids.link, ids.smsc("x1"), receipt(Status::Delivered))
        .await
        .expect("receipt");
    let r = s.get(k).await.expect("get").expect("present");
    assert_eq!(r.status, Status::Undeliverable);
}

async fn receipts(s: &dyn StateStore, ids: &Ids) {
    let k = ids.key("rcpt");
    created(s, ids.record("rcpt", 2)).await;
    updated(
        s,
        &k,
        vec![
            submitted(0, ids.link, &ids.smsc("r0")),
            submitted(1, ids.link + 1, &ids.smsc("r1")),
        ],
    )
    .await;
    assert_eq!(
        s.find_by_smsc_id(ids.link, ids.smsc("r0"))
            .await
            .expect("find"),
        Some((k.clone(), 0))
    );
    assert_eq!(
        s.find_by_smsc_id(ids.link + 1, ids.smsc("r1"))
            .await
            .expect("find"),
        Some((k.clone(), 1))
    );
    // The index is per link: the same id on another link is someone else's.
    assert_eq!(
        s.find_by_smsc_id(ids.link, ids.smsc("r1"))
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        s.apply_receipt(ids.link, ids.smsc("r1"), receipt(Status::Delivered))
            .await
            .expect("receipt"),
        ReceiptOutcome::NotFound
    );
    assert_eq!(
        s.apply_receipt(ids.link, ids.smsc("unknown"), receipt(Status::Delivered))
            .await
            .expect("receipt"),
        ReceiptOutcome::NotFound
    );
    // Intermediate receipt: nothing changes.
    assert_eq!(
        s.apply_receipt(ids.link, ids.smsc("r0"), receipt(Status::Submitted))
            .await
            .expect("receipt"),
        ReceiptOutcome::Duplicate
    );
    // A receipt and its duplicate sent together: one applies, the other is harmless.
    let a = s.apply_receipt(ids.link, ids.smsc("r0"), receipt(Status::Delivered));
    let b = s.apply_receipt(ids.link, ids.smsc("r0"), receipt(Status::Delivered));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    let applied = [&a, &b]
        .iter()
        .filter(|o| matches!(o, ReceiptOutcome::Applied(_)))
        .count();
    assert_eq!(applied, 1, "{a:?} / {b:?}");
    assert!(
        matches!(a, ReceiptOutcome::Duplicate) || matches!(b, ReceiptOutcome::Duplicate),
        "{a:?} / {b:?}"
    );
    let r = s.get(k).await.expect("get").expect("present");
    assert_eq!(r.parts[0].status, Status::Delivered);
    assert_eq!(r.parts[1].status, Status::Submitted);
    assert_eq!(r.status, Status::Submitted);
}

async fn invalid_input(s: &dyn StateStore, ids: &Ids) {
    let mut r = ids.record("inv", 1);
    r.transaction_id = "x".repeat(super::model::MAX_TRANSACTION_ID_LEN + 1);
    assert!(matches!(s.create(r).await, Err(StateError::Invalid(_))));
    let mut r = ids.record("inv", 1);
    r.parts.clear();
    assert!(matches!(s.create(r).await, Err(StateError::Invalid(_))));
    created(s, ids.record("inv", 1)).await;
    assert!(matches!(
        s.update(ids.key("inv"), vec![submitted(0, 1, "")], unix_ms())
            .await,
        Err(StateError::Invalid(_))
    ));
    // Out-of-range part index: ignored, not an error, not a panic.
    let (_, changed) = updated(s, &ids.key("inv"), vec![submitted(9, 1, "zz")]).await;
    assert!(!changed);
}

/// Names of the records `before_reopen` leaves non-final.
const OPEN_NAMES: [&str; 5] = ["open0", "open1", "open2", "open3", "open4"];

async fn before_reopen(s: &dyn StateStore, ids: &Ids) {
    for name in OPEN_NAMES {
        created(s, ids.record(name, 1)).await;
    }
    // open1 submitted (still non-final); open2 goes final, so it must not be scanned.
    updated(
        s,
        &ids.key("open1"),
        vec![submitted(0, ids.link, &ids.smsc("o1"))],
    )
    .await;
    updated(
        s,
        &ids.key("open2"),
        vec![submitted(0, ids.link, &ids.smsc("o2"))],
    )
    .await;
    s.apply_receipt(ids.link, ids.smsc("o2"), receipt(Status::Delivered))
        .await
        .expect("receipt");
}

async fn after_reopen(s: &dyn StateStore, ids: &Ids) {
    // Records written before the reopen are all there.
    for name in ["cg", "idem", "fwd", "multi", "rcpt", "open0"] {
        assert!(
            s.get(ids.key(name)).await.expect("get").is_some(),
            "{name} lost across reopen"
        );
    }
    assert_eq!(
        s.get(ids.key("multi"))
            .await
            .expect("get")
            .map(|r| r.status),
        Some(Status::Delivered)
    );
    // Idempotency survives the restart.
    assert!(matches!(
        s.create(ids.record("idem", 1)).await,
        Ok(CreateOutcome::Exists(_))
    ));
    // The receipt index survives too.
    match s
        .apply_receipt(ids.link + 1, ids.smsc("r1"), receipt(Status::Delivered))
        .await
        .expect("receipt")
    {
        ReceiptOutcome::Applied(r) => assert_eq!(r.status, Status::Delivered),
        other => panic!("receipt after reopen: {other:?}"),
    }
    // scan_non_final, in small pages: every non-final record of this run exactly once.
    let mut cursor: Option<ScanCursor> = None;
    let mut mine = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.scan_non_final(cursor.take(), 2).await.expect("scan");
        pages += 1;
        assert!(page.records.len() <= 2, "page over limit");
        for r in page.records {
            assert!(!r.status.is_final(), "scan returned final {r:?}");
            if r.app_id == ids.app && r.transaction_id.starts_with(&ids.prefix) {
                mine.push(r.transaction_id.trim_start_matches(&ids.prefix).to_string());
            }
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 100_000, "scan does not terminate");
    }
    mine.sort();
    // Final by now: fwd, rej, multi, mixed, open2, rcpt (its last receipt came just above).
    let mut expect: Vec<String> = [
        "cg", "idem", "race", "inv", "open0", "open1", "open3", "open4", "hand", "unhanded",
    ]
    .iter()
    .map(|n| format!("-{n}"))
    .collect();
    expect.sort();
    assert_eq!(mine, expect, "non-final records after reopen");
    let open0 = s
        .get(ids.key("open0"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        open0.text.as_deref(),
        Some("text of open0"),
        "resubmission data kept"
    );
    // The hand-over mark survives the reopen, and its absence does too (crash recovery reads
    // both: marked = maybe on the wire, unmarked = never sent).
    let hand = s.get(ids.key("hand")).await.expect("get").expect("present");
    assert!(hand.handed_at_ms.is_some(), "hand-over mark lost: {hand:?}");
    assert_eq!(hand.text.as_deref(), Some("text of hand"));
    let unhanded = s
        .get(ids.key("unhanded"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(unhanded.handed_at_ms, None, "mark appeared from nowhere");
    // Set once: after the reopen it still only moves from absent to present.
    let (again, changed) = updated(s, &ids.key("hand"), vec![PartUpdate::Handed]).await;
    assert!(!changed, "mark set twice across a reopen");
    assert_eq!(again.handed_at_ms, hand.handed_at_ms);
}

/// `PartUpdate::Handed`: set once (the second update reports `changed == false`, which crash
/// resubmission uses as its only-once guard), never on a message that left `Accepted`, and
/// independent of the parts.
async fn handed_mark(s: &dyn StateStore, ids: &Ids) {
    let r = created(s, ids.record("hand", 2)).await;
    assert_eq!(r.handed_at_ms, None, "a new record is not handed");
    let (r1, changed) = updated(s, &ids.key("hand"), vec![PartUpdate::Handed]).await;
    assert!(changed, "first mark must change the record");
    let at = r1.handed_at_ms.expect("mark set");
    assert_eq!(r1.status, Status::Accepted);
    assert!(r1.parts.iter().all(|p| p.status == Status::Accepted));
    assert_eq!(
        r1.text.as_deref(),
        Some("text of hand"),
        "text kept while pending"
    );
    let (r2, changed) = updated(s, &ids.key("hand"), vec![PartUpdate::Handed]).await;
    assert!(!changed, "second mark must be a no-op");
    assert_eq!(r2.handed_at_ms, Some(at));
    assert_eq!(
        s.get(ids.key("hand"))
            .await
            .expect("get")
            .and_then(|r| r.handed_at_ms),
        Some(at)
    );
    // Two marks raced in one call: one change.
    created(s, ids.record("unhanded", 1)).await;
    created(s, ids.record("hand-race", 1)).await;
    let (r, changed) = updated(
        s,
        &ids.key("hand-race"),
        vec![PartUpdate::Handed, PartUpdate::Handed],
    )
    .await;
    assert!(changed && r.handed_at_ms.is_some());
    // A message already final is never marked (nothing left to hand over).
    updated(
        s,
        &ids.key("hand-race"),
        vec![PartUpdate::AllPending {
            status: Status::Failed,
            error_code: None,
        }],
    )
    .await;
    created(s, ids.record("hand-final", 1)).await;
    updated(
        s,
        &ids.key("hand-final"),
        vec![PartUpdate::AllPending {
            status: Status::Failed,
            error_code: None,
        }],
    )
    .await;
    let (r, changed) = updated(s, &ids.key("hand-final"), vec![PartUpdate::Handed]).await;
    assert!(
        !changed && r.handed_at_ms.is_none(),
        "final record marked: {r:?}"
    );
    // Unknown key: not found, nothing created.
    assert_eq!(
        s.update(ids.key("hand-missing"), vec![PartUpdate::Handed], unix_ms())
            .await
            .expect("update"),
        UpdateOutcome::NotFound
    );
}

async fn expire_due(s: &dyn StateStore, ids: &Ids) {
    // As if the TTL had passed: every non-final record of this run becomes Expired, once.
    let later = unix_ms() + SUITE_TTL_SECS * 1000 + 60_000;
    let mut mine = Vec::new();
    for _ in 0..10_000 {
        let batch = s.expire_due(later, 100).await.expect("expire");
        if batch.is_empty() {
            break;
        }
        for r in batch {
            assert!(r.status.is_final(), "expired record not final: {r:?}");
            if r.app_id == ids.app && r.transaction_id.starts_with(&ids.prefix) {
                assert_eq!(r.status, Status::Expired);
                mine.push(r.transaction_id);
            }
        }
    }
    assert!(mine.contains(&ids.key("open1").transaction_id), "{mine:?}");
    assert!(mine.contains(&ids.key("open0").transaction_id), "{mine:?}");
    assert!(
        !mine.contains(&ids.key("open2").transaction_id),
        "final one expired: {mine:?}"
    );
    assert!(!mine.contains(&ids.key("fwd").transaction_id), "{mine:?}");
    let n = mine.len();
    mine.sort();
    mine.dedup();
    assert_eq!(n, mine.len(), "a record expired twice");
    assert!(
        s.expire_due(later, 100)
            .await
            .expect("expire")
            .iter()
            .all(|r| { !(r.app_id == ids.app && r.transaction_id.starts_with(&ids.prefix)) })
    );
    let r = s
        .get(ids.key("open1"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(r.status, Status::Expired);
    assert_eq!(r.parts[0].status, Status::Expired);
}

async fn expiry_hides(s: &dyn StateStore, ids: &Ids) {
    let k = ids.key("short");
    created(s, ids.record("short", 1)).await;
    updated(s, &k, vec![submitted(0, ids.link, &ids.smsc("short"))]).await;
    assert!(s.get(k.clone()).await.expect("get").is_some());
    // Blocking sleep: the store completes futures from its own threads, so blocking the
    // calling runtime thread here is fine in a test.
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(
        s.get(k.clone()).await.expect("get"),
        None,
        "expired record visible"
    );
    assert_eq!(
        s.find_by_smsc_id(ids.link, ids.smsc("short"))
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        s.apply_receipt(ids.link, ids.smsc("short"), receipt(Status::Delivered))
            .await
            .expect("receipt"),
        ReceiptOutcome::NotFound
    );
    // The id is free again after expiry (documented: idempotency lasts one TTL).
    created(s, ids.record("short", 1)).await;
}
