//! CDR export against a local directory and a real S3-compatible server (`moto[server]`, started
//! here on a free loopback port and killed by PID on drop). Missing moto (`python3 -m
//! moto.server` not importable) prints `SKIPPED:` and returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::moto::{self, Moto, free_port};
use common::wait_until;
use smsgw::cdr::{CdrConfig, CdrRecord, CdrWriter, ClosedBy, RecordError, SinkKind};
use smsgw::state::model::{Encoding, MessageKey, MessageRecord, ReceiptInfo, Status};

const BUCKET: &str = "cdr-bucket";
const PREFIX: &str = "exports/";

fn message(i: usize) -> MessageRecord {
    let mut m = MessageRecord::new_accepted(
        MessageKey::new(42, format!("tx-{i}")),
        3,
        "ACME",
        format!("+4915100{i:05}"),
        Encoding::Ucs2,
        "private words",
        2,
        1_000 + i as u64,
    );
    m.status = Status::Delivered;
    m.link_id = Some(9);
    m.updated_at_ms = 5_000 + i as u64;
    for p in &mut m.parts {
        p.status = Status::Delivered;
        p.link_id = Some(9);
        p.smsc_message_id = Some(format!("smsc-{i}-{}", p.index));
        p.submitted_at_ms = Some(2_000);
        p.receipt = Some(ReceiptInfo {
            status: Status::Delivered,
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            done_at_ms: Some(4_000),
            received_at_ms: 4_500,
        });
    }
    m.text = None;
    m
}

fn cdr(i: usize) -> CdrRecord {
    CdrRecord::from_message(&message(i), "gw-test", 10_000).expect("final record")
}

fn gunzip(gz: &[u8]) -> Vec<CdrRecord> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut s)
        .expect("valid gzip");
    s.lines()
        .map(|l| serde_json::from_str(l).expect("one CDR per line"))
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// `cdr/dt=YYYY-MM-DD/hr=HH/gw-test-<ms>-<seq>.ndjson.gz`
fn assert_key_layout(key: &str) {
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 4, "{key}");
    assert_eq!(parts[0], "cdr", "{key}");
    assert!(parts[1].starts_with("dt=") && parts[1].len() == 13, "{key}");
    assert!(parts[2].starts_with("hr=") && parts[2].len() == 5, "{key}");
    let name = parts[3].strip_suffix(".ndjson.gz").expect(key);
    let rest = name.strip_prefix("gw-test-").expect(key);
    let (ms, seq) = rest.split_once('-').expect(key);
    assert!(
        ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        "{key}"
    );
}

fn assert_exactly_once(records: &[CdrRecord], n: usize) {
    let mut seen = BTreeMap::new();
    for r in records {
        *seen.entry(r.transaction_id.clone()).or_insert(0) += 1;
    }
    let want: BTreeMap<String, i32> = (0..n).map(|i| (format!("tx-{i}"), 1)).collect();
    assert_eq!(seen, want, "every CDR exactly once");
}

#[test]
fn local_sink_writes_partitioned_gzip_ndjson() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CdrConfig {
        sink: SinkKind::Local,
        dir: tmp.path().join("out"),
        batch_max_records: 10,
        flush_interval_ms: 60_000,
        ..CdrConfig::default()
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    for i in 0..25 {
        w.record(cdr(i)).unwrap();
    }
    let rep = w.flush().unwrap();
    assert_eq!(rep.batches_pending, 0);
    let files = files_under(&tmp.path().join("out"));
    assert_eq!(files.len(), 3, "25 records at 10 per batch: {files:?}");
    let mut all = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(tmp.path().join("out")).unwrap();
        assert_key_layout(rel.to_str().unwrap());
        all.extend(gunzip(&std::fs::read(f).unwrap()));
    }
    assert_exactly_once(&all, 25);
    let r7 = all.iter().find(|r| r.transaction_id == "tx-7").unwrap();
    assert_eq!(r7, &cdr(7), "round trip keeps every field");
    assert_eq!(r7.closed_by, ClosedBy::Final);
    assert_eq!(r7.parts_count, 2);
    assert_eq!(r7.parts[1].smsc_message_id.as_deref(), Some("smsc-7-1"));
    assert_eq!(r7.parts[0].receipt_stat.as_deref(), Some("DELIVRD"));
    for f in &files {
        let raw = gunzip_text(&std::fs::read(f).unwrap());
        assert!(!raw.contains("private"), "no message text in CDRs");
    }
    let st = w.stats();
    assert_eq!(st.batches_written.load(Ordering::Relaxed), 3);
    assert_eq!(w.shutdown().unwrap().records_lost, 0);
}

#[test]
fn time_based_flush_closes_a_small_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CdrConfig {
        sink: SinkKind::Local,
        dir: tmp.path().to_owned(),
        flush_interval_ms: 200,
        ..CdrConfig::default()
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    w.record(cdr(0)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || files_under(tmp.path()).len()
            == 1),
        "a one-record batch is written after flush_interval_ms without flush()"
    );
    drop(w);
}

fn gunzip_text(gz: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut s)
        .unwrap();
    s
}

// ---------------------------------------------------------------------------------------------
// S3 (moto)

/// moto on `port` with the CDR bucket created (moto keeps nothing across restarts).
fn start_moto(port: u16) -> Moto {
    let m = Moto::start_on(port);
    m.create_bucket(BUCKET);
    m
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object under `PREFIX` with its decoded records.
fn objects(endpoint: &str) -> BTreeMap<String, Vec<CdrRecord>> {
    let b = moto::bucket(endpoint, BUCKET);
    rt().block_on(async {
        let mut out = BTreeMap::new();
        for page in b.list(PREFIX.into(), None).await.unwrap() {
            for o in page.contents {
                let r = b.get_object(&o.key).await.unwrap();
                assert_eq!(r.status_code(), 200, "GET {}", o.key);
                out.insert(o.key.clone(), gunzip(r.as_slice()));
            }
        }
        out
    })
}

fn s3_config(tmp: &Path, endpoint: &str) -> CdrConfig {
    let ak = tmp.join("ak");
    let sk = tmp.join("sk");
    std::fs::write(&ak, "test\n").unwrap();
    std::fs::write(&sk, "test\n").unwrap();
    CdrConfig {
        sink: SinkKind::S3,
        spool_dir: tmp.join("spool"),
        batch_max_records: 10,
        flush_interval_ms: 60_000,
        s3_bucket: BUCKET.into(),
        s3_prefix: PREFIX.into(),
        s3_endpoint: endpoint.into(),
        s3_region: "us-east-1".into(),
        s3_path_style: true,
        s3_timeout_ms: 3_000,
        s3_access_key_file: Some(ak),
        s3_secret_key_file: Some(sk),
        retry_max_ms: 400,
        ..CdrConfig::default()
    }
}

fn spool_keys(spool: &Path) -> BTreeSet<String> {
    files_under(spool)
        .into_iter()
        .map(|p| p.strip_prefix(spool).unwrap().to_str().unwrap().to_owned())
        .filter(|k| k.ends_with(".ndjson.gz"))
        .collect()
}

#[test]
fn s3_sink_uploads_to_partitioned_keys() {
    if !moto::available() {
        return;
    }
    let moto = start_moto(free_port());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CdrConfig {
        batch_max_records: 7,
        ..s3_config(tmp.path(), &moto.endpoint())
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    for i in 0..20 {
        w.record(cdr(i)).unwrap();
    }
    assert_eq!(w.flush().unwrap().batches_pending, 0);
    let objs = objects(&moto.endpoint());
    assert_eq!(
        objs.len(),
        3,
        "20 records at 7 per batch: {:?}",
        objs.keys()
    );
    for k in objs.keys() {
        assert_key_layout(k.strip_prefix(PREFIX).expect("prefix"));
    }
    let all: Vec<CdrRecord> = objs.into_values().flatten().collect();
    assert_exactly_once(&all, 20);
    assert!(
        spool_keys(&tmp.path().join("spool")).is_empty(),
        "spool files are deleted after a 2xx"
    );
    assert_eq!(w.shutdown().unwrap().batches_pending, 0);
}

#[test]
fn s3_down_spools_then_drains_exactly_once_to_the_same_keys() {
    if !moto::available() {
        return;
    }
    let port = free_port();
    let moto = start_moto(port);
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let w = CdrWriter::start(s3_config(tmp.path(), &moto.endpoint()), "gw-test").unwrap();
    // Warm-up batch while S3 is up (lost with moto's memory below; not counted).
    for i in 1000..1005 {
        w.record(cdr(i)).unwrap();
    }
    assert_eq!(w.flush().unwrap().batches_pending, 0);

    drop(moto); // S3 dies mid-run.
    for i in 0..30 {
        w.record(cdr(i)).expect("spool has room: no backpressure");
        if i % 10 == 9 {
            w.flush().unwrap();
        }
    }
    let rep = w.flush().unwrap();
    assert_eq!(rep.batches_pending, 3, "three batches wait in the spool");
    let keys = spool_keys(&spool);
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(w.stats().spool_files.load(Ordering::Relaxed), 3);
    assert!(w.stats().upload_failures.load(Ordering::Relaxed) >= 1);

    // S3 back on the same port, with a fresh (empty) bucket.
    let moto = start_moto(port);
    assert!(
        wait_until(Duration::from_secs(30), || {
            w.stats().spool_files.load(Ordering::Relaxed) == 0
        }),
        "the retry loop drains the spool once S3 is back"
    );
    let objs = objects(&moto.endpoint());
    let uploaded: BTreeSet<String> = objs
        .keys()
        .map(|k| k.strip_prefix(PREFIX).unwrap().to_owned())
        .collect();
    assert_eq!(
        uploaded, keys,
        "each batch went to the key fixed when it was spooled"
    );
    let all: Vec<CdrRecord> = objs.into_values().flatten().collect();
    assert_exactly_once(&all, 30);
    assert!(spool_keys(&spool).is_empty());
    assert_eq!(w.shutdown().unwrap().batches_pending, 0);
}

#[test]
fn pending_spool_is_uploaded_at_next_start() {
    if !moto::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    // Nothing listens on this port: every upload fails, the batches stay spooled.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = CdrConfig {
        batch_max_records: 5,
        ..s3_config(tmp.path(), &dead)
    };
    let w = CdrWriter::start(cfg.clone(), "gw-test").unwrap();
    for i in 0..12 {
        w.record(cdr(i)).unwrap();
    }
    let rep = w.shutdown().unwrap();
    assert_eq!(
        rep.batches_pending, 3,
        "12 records at 5 per batch, flushed at shutdown"
    );
    assert_eq!(rep.records_lost, 0);
    let keys = spool_keys(&spool);
    assert_eq!(keys.len(), 3);

    let moto = start_moto(free_port());
    // Plant a stale object at every spooled key, as an earlier attempt that reached S3 but whose
    // answer was lost would have: the retry must overwrite it, not add a second object.
    rt().block_on(async {
        let b = moto::bucket(&moto.endpoint(), BUCKET);
        for k in &keys {
            let r = b
                .put_object(format!("{PREFIX}{k}"), b"stale")
                .await
                .unwrap();
            assert_eq!(r.status_code(), 200);
        }
    });
    let cfg = CdrConfig {
        s3_endpoint: moto.endpoint(),
        ..cfg
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            w.stats().spool_files.load(Ordering::Relaxed) == 0
        }),
        "spool from the earlier run uploaded at start"
    );
    let objs = objects(&moto.endpoint());
    let uploaded: BTreeSet<String> = objs
        .keys()
        .map(|k| k.strip_prefix(PREFIX).unwrap().to_owned())
        .collect();
    assert_eq!(
        uploaded, keys,
        "same keys: the stale objects were overwritten"
    );
    // `objects` gunzips every object, so a remaining stale one fails here.
    let all: Vec<CdrRecord> = objs.into_values().flatten().collect();
    assert_exactly_once(&all, 12);
    assert!(spool_keys(&spool).is_empty());
    drop(w);
}

#[test]
fn full_spool_applies_backpressure_and_loses_nothing() {
    // Needs no S3 at all: the endpoint is dead on purpose.
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = CdrConfig {
        batch_max_records: 2,
        max_spool_files: 1,
        queue_capacity: 4,
        ..s3_config(tmp.path(), &dead)
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..200 {
        match w.record(cdr(i)) {
            Ok(()) => accepted += 1,
            Err(RecordError::Backpressure(c)) => {
                refused = Some((i, c));
                break;
            }
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (i, c) = refused.expect("backpressure once the spool is full");
    assert_eq!(
        c.transaction_id,
        format!("tx-{i}"),
        "refused CDR handed back"
    );
    assert!(
        w.is_backpressured(),
        "the flag stays up while the held batch has no place"
    );
    let rep = w.shutdown().unwrap();
    assert_eq!(rep.records_lost, 0);
    // Everything accepted is in the spool (shutdown may exceed the bound rather than lose).
    let mut all = Vec::new();
    for k in spool_keys(&spool) {
        all.extend(gunzip(&std::fs::read(spool.join(k)).unwrap()));
    }
    assert_exactly_once(&all, accepted);
}

#[test]
fn local_sink_takes_20k_records_exactly_once() {
    // Bounded: 20k records, and the writer must finish within the control timeout.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CdrConfig {
        sink: SinkKind::Local,
        dir: tmp.path().to_owned(),
        batch_max_records: 5_000,
        queue_capacity: 1_024,
        ..CdrConfig::default()
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    let recs: Vec<CdrRecord> = (0..20_000).map(cdr).collect();
    let t = std::time::Instant::now();
    let mut refused = 0u64;
    for r in recs {
        let mut r = r;
        // A full queue is backpressure, not loss: hold the CDR and offer it again.
        loop {
            match w.record(r) {
                Ok(()) => break,
                Err(RecordError::Backpressure(c)) => {
                    refused += 1;
                    r = *c;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    w.flush().unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "cdr local sink: 20000 records in {secs:.2}s ({:.0}/s, debug build), {refused} backpressure answers",
        20_000.0 / secs
    );
    let mut all = Vec::new();
    for f in files_under(tmp.path()) {
        all.extend(gunzip(&std::fs::read(f).unwrap()));
    }
    assert_exactly_once(&all, 20_000);
}

/// The open batch is journalled under the spool dir: a writer that dies without flushing (a
/// crash; here leaked, so it never closes the batch) loses none of it: the next start
/// uploads exactly those records, under the batch's own key.
#[test]
fn s3_open_batch_of_a_crashed_writer_is_uploaded_at_next_start() {
    if !moto::available() {
        return;
    }
    let moto = start_moto(free_port());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = CdrConfig {
        batch_max_records: 100,
        ..s3_config(tmp.path(), &moto.endpoint())
    };
    let w = CdrWriter::start(cfg.clone(), "gw-test").unwrap();
    for i in 0..5 {
        w.record(cdr(i)).unwrap();
    }
    let journal_dir = tmp.path().join("spool").join(".journal");
    let journalled = || {
        if !journal_dir.exists() {
            return 0;
        }
        files_under(&journal_dir)
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum::<usize>()
    };
    // Key line + 5 records, written once the writer took them from its channel.
    assert!(
        wait_until(Duration::from_secs(5), || journalled() == 6),
        "journal lines: {}",
        journalled()
    );
    std::mem::forget(w);
    assert!(objects(&moto.endpoint()).is_empty(), "nothing uploaded yet");

    let w2 = CdrWriter::start(cfg, "gw-test").unwrap();
    assert_eq!(w2.flush().unwrap().batches_pending, 0);
    let objs = objects(&moto.endpoint());
    assert_eq!(objs.len(), 1, "{:?}", objs.keys());
    for key in objs.keys() {
        assert_key_layout(key.strip_prefix(PREFIX).unwrap());
    }
    let all: Vec<CdrRecord> = objs.into_values().flatten().collect();
    assert_exactly_once(&all, 5);
    assert_eq!(journalled(), 0, "journal removed once spooled");
    assert_eq!(w2.shutdown().unwrap().records_lost, 0);
}

/// `gzip_level` reaches the batches: the same 200 CDRs stored (level 0) and at level 9.
#[test]
fn gzip_level_is_applied_to_batches() {
    let sizes: Vec<usize> = [0, 9]
        .iter()
        .map(|&level| {
            let tmp = tempfile::tempdir().unwrap();
            let cfg = CdrConfig {
                sink: SinkKind::Local,
                dir: tmp.path().join("out"),
                batch_max_records: 200,
                flush_interval_ms: 60_000,
                gzip_level: level,
                ..CdrConfig::default()
            };
            let w = CdrWriter::start(cfg, "gw-test").unwrap();
            for i in 0..200 {
                w.record(cdr(i)).unwrap();
            }
            assert_eq!(w.flush().unwrap().batches_pending, 0);
            let files = files_under(&tmp.path().join("out"));
            assert_eq!(files.len(), 1, "{files:?}");
            let gz = std::fs::read(&files[0]).unwrap();
            assert_exactly_once(&gunzip(&gz), 200);
            assert_eq!(w.shutdown().unwrap().records_lost, 0);
            gz.len()
        })
        .collect();
    assert!(sizes[0] > 4 * sizes[1], "level 0 vs 9: {sizes:?}");
}

/// A batch whose crash journal cannot be created is still exported (only its crash protection
/// is gone), and the failure is counted for an alert.
#[test]
fn unwritable_journal_is_counted_and_cdrs_still_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A file where the journal directory belongs.
    std::fs::write(out.join(".journal"), b"not a directory").unwrap();
    let cfg = CdrConfig {
        sink: SinkKind::Local,
        dir: out.clone(),
        batch_max_records: 10,
        flush_interval_ms: 60_000,
        ..CdrConfig::default()
    };
    let w = CdrWriter::start(cfg, "gw-test").unwrap();
    for i in 0..25 {
        w.record(cdr(i)).unwrap();
    }
    assert_eq!(w.flush().unwrap().batches_pending, 0);
    let files: Vec<PathBuf> = files_under(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    let all: Vec<CdrRecord> = files
        .iter()
        .flat_map(|f| gunzip(&std::fs::read(f).unwrap()))
        .collect();
    assert_exactly_once(&all, 25);
    // Three batches (10 + 10 + 5), none of them journalled.
    assert_eq!(w.stats().journal_failures.load(Ordering::Relaxed), 3);
    assert_eq!(w.shutdown().unwrap().records_lost, 0);
}
