//! CDR export: one record per finished message, batched and written as gzip NDJSON to a local
//! directory (default) or to S3, with a local write-ahead spool when S3 is down.
//!
//! Threading: [`CdrWriter::record`] is a `try_send` on a bounded channel, callable from any
//! thread (shards, the side runtime). One dedicated thread (`smsgw-cdr`) owns the batch, the
//! spool and the S3 client, on its own single-threaded tokio runtime, so slow S3 calls never
//! touch a shard and no state is shared except two atomics.
//!
//! Guarantees (see `docs/operations.md`, `## CDR export`):
//! * A CDR accepted by `record` (it returned `Ok`) is written once to the sink. The open batch
//!   is journalled on disk as it grows (`journal`), so a process crash loses only CDRs still in
//!   the channel; the next start places the journalled batch under its own key.
//! * S3: a batch is written to the spool dir (fsynced, atomically renamed) BEFORE the upload is
//!   attempted and deleted only after a 2xx. The object key is fixed when the batch is closed
//!   and stored as the spool file's path, so any retry (also after a restart) PUTs the same key
//!   and overwrites rather than duplicates.
//! * Nothing is dropped silently: when the spool is full (and S3 still down) the writer keeps
//!   the closed batch in memory, stops taking records and `record` answers
//!   [`RecordError::Backpressure`] with the CDR handed back to the caller.

mod emit;
mod journal;
pub mod record;

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use record::{CdrPart, CdrRecord, ClosedBy, SCHEMA_VERSION};

/// Where batches go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Local,
    S3,
}

/// `[cdr]` configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdrConfig {
    /// `local` (default) or `s3`.
    pub sink: SinkKind,
    /// Local sink: root directory of the partitioned files.
    pub dir: PathBuf,
    /// S3 sink: write-ahead spool directory (must survive restarts).
    pub spool_dir: PathBuf,
    /// A batch is closed at this many records...
    pub batch_max_records: usize,
    /// ...or this many uncompressed NDJSON bytes...
    pub batch_max_bytes: usize,
    /// ...or this long after its first record.
    pub flush_interval_ms: u64,
    /// Records waiting between `record` and the writer thread.
    pub queue_capacity: usize,
    pub s3_bucket: String,
    /// Prepended to every key (e.g. `prod/`); empty for none.
    pub s3_prefix: String,
    /// Custom endpoint (MinIO, moto, ...); empty for AWS.
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_path_style: bool,
    /// Per-request timeout.
    pub s3_timeout_ms: u64,
    /// Files holding the access / secret key (Docker/Kubernetes secrets). When unset, the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables (then the AWS
    /// profile) are used.
    pub s3_access_key_file: Option<PathBuf>,
    pub s3_secret_key_file: Option<PathBuf>,
    /// Spool bound in bytes (compressed); beyond it the writer applies backpressure.
    pub max_spool_bytes: u64,
    /// Spool bound in files.
    pub max_spool_files: usize,
    /// Upper bound of the doubling retry delay for failed uploads / writes.
    pub retry_max_ms: u64,
    /// gzip level of a batch, 0..=9. 1 (default) costs ~0.5 µs per CDR on the writer thread
    /// and compresses ~11×; 6 (zlib's usual default) ~4.3 µs and ~19× (`cargo bench --bench
    /// cdr`).
    pub gzip_level: u32,
}

impl Default for CdrConfig {
    fn default() -> Self {
        CdrConfig {
            sink: SinkKind::Local,
            dir: PathBuf::from("var/cdr"),
            spool_dir: PathBuf::from("var/cdr-spool"),
            batch_max_records: 10_000,
            batch_max_bytes: 8 << 20,
            flush_interval_ms: 60_000,
            queue_capacity: 65_536,
            s3_bucket: String::new(),
            s3_prefix: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_path_style: false,
            s3_timeout_ms: 10_000,
            s3_access_key_file: None,
            s3_secret_key_file: None,
            max_spool_bytes: 1 << 30,
            max_spool_files: 10_000,
            retry_max_ms: 30_000,
            gzip_level: 1,
        }
    }
}

// By hand: the config's Debug output is logged, and the word "secret" must never appear in it
// (a test greps for it); the key file paths are shown only as set/unset.
impl std::fmt::Debug for CdrConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrConfig")
            .field("sink", &self.sink)
            .field("dir", &self.dir)
            .field("spool_dir", &self.spool_dir)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_prefix", &self.s3_prefix)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_path_style", &self.s3_path_style)
            .field("s3_timeout_ms", &self.s3_timeout_ms)
            .field(
                "s3_key_files",
                &(self.s3_access_key_file.is_some() && self.s3_secret_key_file.is_some()),
            )
            .field("max_spool_bytes", &self.max_spool_bytes)
            .field("max_spool_files", &self.max_spool_files)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("gzip_level", &self.gzip_level)
            .finish()
    }
}

/// Errors from configuration, start-up and the control calls.
#[derive(Debug, thiserror::Error)]
pub enum CdrError {
    #[error("cdr config: {0}")]
    Config(String),
    #[error("cdr: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cdr s3: {0}")]
    S3(String),
    #[error("cdr writer has stopped")]
    Stopped,
    #[error("cdr writer did not answer within {0:?}")]
    Timeout(Duration),
}

/// Why [`CdrWriter::record`] refused a CDR. The CDR is handed back: the caller decides whether
/// to hold and retry it or to count it as not exported; the writer never drops it silently.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cdr writer is applying backpressure (queue or spool full)")]
    Backpressure(Box<CdrRecord>),
    #[error("cdr writer has stopped")]
    Stopped(Box<CdrRecord>),
}

impl CdrConfig {
    /// Checks values that would make the writer misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), CdrError> {
        let bad = |m: &str| Err(CdrError::Config(m.to_owned()));
        if self.batch_max_records == 0 || self.batch_max_bytes == 0 {
            return bad("batch_max_records and batch_max_bytes must be > 0");
        }
        if self.flush_interval_ms == 0 || self.queue_capacity == 0 || self.retry_max_ms == 0 {
            return bad("flush_interval_ms, queue_capacity and retry_max_ms must be > 0");
        }
        if self.max_spool_files == 0 || self.max_spool_bytes == 0 {
            return bad("max_spool_bytes and max_spool_files must be > 0");
        }
        if self.gzip_level > 9 {
            return bad("gzip_level must be 0..=9");
        }
        match self.sink {
            SinkKind::Local if self.dir.as_os_str().is_empty() => bad("sink = \"local\" needs dir"),
            SinkKind::S3 if self.s3_bucket.is_empty() => bad("sink = \"s3\" needs s3_bucket"),
            SinkKind::S3 if self.spool_dir.as_os_str().is_empty() => {
                bad("sink = \"s3\" needs spool_dir")
            }
            _ => Ok(()),
        }
    }
}

/// Counters, readable at any time (metrics, tests).
#[derive(Debug, Default)]
pub struct CdrStats {
    pub records_accepted: AtomicU64,
    pub records_rejected: AtomicU64,
    pub batches_closed: AtomicU64,
    /// Batches now in the sink (local file written / S3 PUT answered 2xx).
    pub batches_written: AtomicU64,
    pub upload_failures: AtomicU64,
    pub spool_files: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// Batches that lost their crash journal (it could not be created or written): a crash
    /// before they are placed loses them.
    pub journal_failures: AtomicU64,
    /// CDRs placed at start from the journals of an earlier process (it crashed).
    pub journal_recovered_records: AtomicU64,
}

/// Answer of [`CdrWriter::flush`] / [`CdrWriter::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Batches not yet in the sink (spooled or held in memory).
    pub batches_pending: usize,
    /// Records that could not be placed anywhere at shutdown (local sink unwritable).
    pub records_lost: u64,
}

enum Ctl {
    Flush(std::sync::mpsc::SyncSender<FlushReport>),
    Shutdown(std::sync::mpsc::SyncSender<FlushReport>),
}

/// Handle to the CDR writer thread. Dropping it shuts the writer down (flushing).
pub struct CdrWriter {
    rec_tx: mpsc::Sender<CdrRecord>,
    // Unbounded, but each caller blocks for its answer, so at most one message per caller.
    ctl_tx: mpsc::UnboundedSender<Ctl>,
    backpressure: Arc<AtomicBool>,
    stats: Arc<CdrStats>,
    thread: Option<JoinHandle<()>>,
    /// Refused CDRs held for retry, and the thread that offers them again (see `emit`).
    overflow: Arc<emit::Overflow>,
    overflow_thread: Option<JoinHandle<()>>,
}

/// Pause after each burst, so records arriving meanwhile are taken together.
const COALESCE: Duration = Duration::from_millis(1);

/// Records the writer takes from its channel in one go before serving timers and control.
const BURST: usize = 256;

/// First retry delay after a failed upload/write; doubles up to `retry_max_ms`.
const INITIAL_RETRY: Duration = Duration::from_millis(250);

/// How long `flush`/`shutdown` wait for the writer (one S3 timeout per pending batch could be
/// spent before the answer, so this is generous).
const CONTROL_WAIT: Duration = Duration::from_secs(60);

impl CdrWriter {
    /// Starts the writer. `instance` names this gateway instance in keys and records
    /// (`[A-Za-z0-9._-]`, 1..=64 bytes). Pending spool files from an earlier run are queued
    /// for upload at once.
    pub fn start(cfg: CdrConfig, instance: &str) -> Result<CdrWriter, CdrError> {
        cfg.validate()?;
        if instance.is_empty()
            || instance.len() > 64
            || !instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(CdrError::Config(format!(
                "instance id {instance:?} must be 1..=64 of [A-Za-z0-9._-] (it is part of the object key)"
            )));
        }
        let sink = match cfg.sink {
            SinkKind::Local => {
                mkdir(&cfg.dir)?;
                Sink::Local(cfg.dir.clone())
            }
            SinkKind::S3 => {
                mkdir(&cfg.spool_dir)?;
                Sink::S3(bucket(&cfg)?)
            }
        };
        let stats = Arc::new(CdrStats::default());
        let backpressure = Arc::new(AtomicBool::new(false));
        let (rec_tx, rec_rx) = mpsc::channel(cfg.queue_capacity);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let mut w = Writer {
            queue: VecDeque::new(),
            spool_bytes: 0,
            delay: INITIAL_RETRY,
            retry_at: None,
            pending: None,
            buf: Vec::new(),
            count: 0,
            first_ms: 0,
            opened: None,
            seq: 0,
            journal: journal::Journal::new(journal_dir(&cfg)),
            instance: instance.to_owned(),
            sink,
            stats: Arc::clone(&stats),
            backpressure: Arc::clone(&backpressure),
            cfg,
        };
        if matches!(w.sink, Sink::S3(_)) {
            w.scan_spool()?;
        }
        w.recover_journals();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CdrError::Io {
                path: PathBuf::from("<tokio runtime>"),
                source: e,
            })?;
        let thread = std::thread::Builder::new()
            .name("smsgw-cdr".into())
            .spawn(move || rt.block_on(w.run(rec_rx, ctl_rx)))
            .map_err(|e| CdrError::Io {
                path: PathBuf::from("<cdr thread>"),
                source: e,
            })?;
        let (overflow, overflow_thread) = emit::Overflow::start(
            rec_tx.clone(),
            Arc::clone(&backpressure),
            Arc::clone(&stats),
        )
        .map_err(|e| CdrError::Io {
            path: PathBuf::from("<cdr retry thread>"),
            source: e,
        })?;
        Ok(CdrWriter {
            rec_tx,
            ctl_tx,
            backpressure,
            stats,
            thread: Some(thread),
            overflow,
            overflow_thread: Some(overflow_thread),
        })
    }

    /// Queues one CDR. Never blocks: a full queue or spool answers `Backpressure`.
    pub fn record(&self, cdr: CdrRecord) -> Result<(), RecordError> {
        if self.backpressure.load(Ordering::Relaxed) {
            self.stats.records_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(RecordError::Backpressure(Box::new(cdr)));
        }
        match self.rec_tx.try_send(cdr) {
            Ok(()) => {
                self.stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(c)) => {
                self.stats.records_rejected.fetch_add(1, Ordering::Relaxed);
                Err(RecordError::Backpressure(Box::new(c)))
            }
            Err(mpsc::error::TrySendError::Closed(c)) => Err(RecordError::Stopped(Box::new(c))),
        }
    }

    /// Closes the current batch (with every CDR recorded before this call) and tries to put
    /// it and any spooled batch into the sink now, ignoring the retry back-off. Blocks the
    /// calling thread (up to 60 s); do not call it on a shard's event loop.
    pub fn flush(&self) -> Result<FlushReport, CdrError> {
        self.control(Ctl::Flush)
    }

    /// Flushes and stops the writer. Batches that cannot be uploaded stay in the spool and
    /// are uploaded by the next start. Blocks (up to 60 s).
    pub fn shutdown(mut self) -> Result<FlushReport, CdrError> {
        self.stop()
    }

    /// Counters.
    pub fn stats(&self) -> &CdrStats {
        &self.stats
    }

    /// Records queued for the writer thread and not yet taken by it (read-only, for the
    /// metrics backlog gauge; the channel is bounded by `queue_capacity`).
    pub fn queued_records(&self) -> usize {
        self.rec_tx.max_capacity() - self.rec_tx.capacity()
    }

    /// True while `record` refuses CDRs.
    pub fn is_backpressured(&self) -> bool {
        self.backpressure.load(Ordering::Relaxed)
    }

    fn stop(&mut self) -> Result<FlushReport, CdrError> {
        let Some(t) = self.thread.take() else {
            return Err(CdrError::Stopped);
        };
        // Refused CDRs still held go to the writer before its final flush.
        let held_lost = self.overflow.drain_for_shutdown(
            self.overflow_thread.take(),
            &self.rec_tx,
            &self.backpressure,
            &self.stats,
        );
        let r = self.control(Ctl::Shutdown);
        if r.is_ok() {
            let _ = t.join();
        }
        r.map(|mut report| {
            report.records_lost += held_lost;
            report
        })
    }

    fn control(
        &self,
        make: fn(std::sync::mpsc::SyncSender<FlushReport>) -> Ctl,
    ) -> Result<FlushReport, CdrError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.ctl_tx.send(make(tx)).map_err(|_| CdrError::Stopped)?;
        rx.recv_timeout(CONTROL_WAIT).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => CdrError::Timeout(CONTROL_WAIT),
            std::sync::mpsc::RecvTimeoutError::Disconnected => CdrError::Stopped,
        })
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.stop()
        {
            warn!("cdr writer shutdown on drop: {e}");
        }
    }
}

enum Sink {
    Local(PathBuf),
    S3(Box<s3::Bucket>),
}

/// A closed, compressed batch with its final key (relative, without `s3_prefix`).
struct Batch {
    key: String,
    gz: Vec<u8>,
    records: u64,
    /// Its crash journal, removed once the batch is placed (local file written, or spooled).
    journal: Option<PathBuf>,
}

/// A batch in the spool dir: `spool_dir/<key>`.
struct Spooled {
    key: String,
    len: u64,
}

struct Writer {
    cfg: CdrConfig,
    instance: String,
    sink: Sink,
    stats: Arc<CdrStats>,
    backpressure: Arc<AtomicBool>,
    // Open batch: NDJSON lines.
    buf: Vec<u8>,
    count: usize,
    first_ms: u64,
    opened: Option<Instant>,
    seq: u64,
    /// Crash journal of the open batch (`<dir>/.journal` or `<spool_dir>/.journal`).
    journal: journal::Journal,
    /// A closed batch that found no place (spool full, local dir unwritable). While set, no
    /// records are taken from the channel.
    pending: Option<Batch>,
    /// Spooled batches in upload order.
    queue: VecDeque<Spooled>,
    spool_bytes: u64,
    retry_at: Option<Instant>,
    delay: Duration,
}

impl Writer {
    async fn run(
        mut self,
        mut rec_rx: mpsc::Receiver<CdrRecord>,
        mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) {
        if !self.queue.is_empty() {
            info!(
                files = self.queue.len(),
                bytes = self.spool_bytes,
                "cdr: uploading spool left by an earlier run"
            );
            self.drain_spool().await;
        }
        let flush_every = Duration::from_millis(self.cfg.flush_interval_ms);
        loop {
            // While a batch is held, the open one cannot close: only the retry timer counts.
            let batch_due = self
                .opened
                .filter(|_| self.pending.is_none())
                .map(|t| t + flush_every);
            let deadline = match (batch_due, self.retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep_until =
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                c = ctl_rx.recv() => match c {
                    Some(Ctl::Flush(tx)) => {
                        self.take_queued(&mut rec_rx).await;
                        self.close_batch().await;
                        self.retry_now().await;
                        let _ = tx.send(self.report(0));
                    }
                    Some(Ctl::Shutdown(tx)) => {
                        let r = self.finish(&mut rec_rx).await;
                        let _ = tx.send(r);
                        return;
                    }
                    None => {
                        self.finish(&mut rec_rx).await;
                        return;
                    }
                },
                r = rec_rx.recv(), if self.pending.is_none() => match r {
                    Some(rec) => {
                        self.add(rec).await;
                        // The rest of the burst without going around the select (and its
                        // timer) per record; bounded so control messages and timers are
                        // still served under sustained load.
                        for _ in 0..BURST {
                            if self.pending.is_some() {
                                break;
                            }
                            match rec_rx.try_recv() {
                                Ok(rec) => self.add(rec).await,
                                Err(_) => break,
                            }
                            if self.journal.flush_due() {
                                self.flush_journal();
                            }
                        }
                        // To the OS as soon as the burst is taken (one write per burst), or
                        // every few ms / 64 KiB under sustained load.
                        if rec_rx.is_empty() || self.journal.flush_due() {
                            self.flush_journal();
                        }
                        // Not waiting on the channel for a moment: senders do not wake this
                        // thread per record (a futex wake-up each), the next burst collects.
                        tokio::time::sleep(COALESCE).await;
                    }
                    None => {
                        self.finish(&mut rec_rx).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(sleep_until.into()) => {
                    let now = Instant::now();
                    if batch_due.is_some_and(|t| t <= now) {
                        self.close_batch().await;
                    }
                    if self.retry_at.is_some_and(|t| t <= now) {
                        self.retry_now().await;
                    }
                }
            }
        }
    }

    /// [`journal::Journal::flush`], counting a failure (the batch goes on without a journal).
    fn flush_journal(&mut self) {
        if !self.journal.flush() {
            self.stats.journal_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self, lost: u64) -> FlushReport {
        FlushReport {
            batches_pending: self.queue.len() + usize::from(self.pending.is_some()),
            records_lost: lost,
        }
    }

    /// Moves every CDR already in the channel into batches (as long as batches find a place).
    async fn take_queued(&mut self, rec_rx: &mut mpsc::Receiver<CdrRecord>) {
        while self.pending.is_none() {
            match rec_rx.try_recv() {
                Ok(r) => self.add(r).await,
                Err(_) => break,
            }
        }
    }

    async fn finish(&mut self, rec_rx: &mut mpsc::Receiver<CdrRecord>) -> FlushReport {
        rec_rx.close();
        let mut lost = 0;
        loop {
            self.take_queued(rec_rx).await;
            self.close_batch().await;
            if let Some(b) = self.pending.take() {
                // No place within the bounds: at shutdown, exceeding the spool bound by one
                // batch beats losing it.
                let placed = match &self.sink {
                    Sink::S3(_) => self.spool(&b).map_err(|e| e.to_string()),
                    Sink::Local(_) => Err("local dir not writable".to_owned()),
                };
                if let Err(e) = placed {
                    if b.journal.is_some() {
                        // Its journal stays: the next start places it (same key).
                        error!(records = b.records, key = %b.key, "cdr: batch not placed at shutdown, kept in its journal for the next start: {e}");
                    } else {
                        error!(records = b.records, key = %b.key, "cdr: batch lost at shutdown: {e}");
                        lost += b.records;
                    }
                }
                continue;
            }
            if self.count == 0 && rec_rx.is_empty() {
                break;
            }
        }
        if matches!(self.sink, Sink::S3(_)) {
            self.drain_spool().await;
        }
        info!(
            spooled = self.queue.len(),
            lost, "cdr writer stopped; spooled batches are uploaded at next start"
        );
        self.report(lost)
    }

    async fn add(&mut self, rec: CdrRecord) {
        let line = match serde_json::to_vec(&rec) {
            Ok(l) => l,
            Err(e) => {
                // Cannot happen for this plain struct; logged so it is never silent.
                error!(tx = %rec.transaction_id, "cdr: cannot encode record: {e}");
                return;
            }
        };
        if self.count > 0 && self.buf.len() + line.len() + 1 > self.cfg.batch_max_bytes {
            // If the closed batch finds no place, this record still starts the next batch:
            // it is taken already, and `pending` stops further intake.
            self.close_batch().await;
        }
        if self.count == 0 {
            self.first_ms = now_ms();
            self.opened = Some(Instant::now());
            // `seq` is taken when this batch closes and not before: the key is final now.
            if !self
                .journal
                .begin(&batch_key(&self.instance, self.first_ms, self.seq))
            {
                self.stats.journal_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.journal.append(&line);
        self.count += 1;
        if self.count >= self.cfg.batch_max_records || self.buf.len() >= self.cfg.batch_max_bytes {
            self.close_batch().await;
        }
    }

    /// Closes the open batch into `pending` and tries to place it. If an earlier closed batch
    /// is still pending, the open batch stays open (it cannot grow: intake is stopped).
    async fn close_batch(&mut self) {
        if self.count == 0 || self.pending.is_some() {
            return;
        }
        let key = batch_key(&self.instance, self.first_ms, self.seq);
        self.seq += 1;
        // Every line of the batch is in its journal before the batch exists anywhere else
        // (a failed write here drops the journal and is counted; `close` then gives `None`).
        self.flush_journal();
        let journal = self.journal.close();
        let gz = gzip(&self.buf, self.cfg.gzip_level);
        self.pending = Some(Batch {
            key,
            gz,
            records: self.count as u64,
            journal,
        });
        self.stats.batches_closed.fetch_add(1, Ordering::Relaxed);
        self.buf.clear();
        self.count = 0;
        self.opened = None;
        self.place().await;
    }

    /// Puts `pending` into the local dir or the spool (then tries the upload).
    async fn place(&mut self) {
        let Some(b) = self.pending.take() else { return };
        match &self.sink {
            Sink::Local(dir) => match write_atomic(&dir.join(&b.key), &b.gz) {
                Ok(()) => {
                    if let Some(j) = &b.journal {
                        journal::remove(j);
                    }
                    self.stats.batches_written.fetch_add(1, Ordering::Relaxed);
                    self.ok();
                }
                Err(e) => {
                    warn!(key = %b.key, "cdr: local write failed, will retry: {e}");
                    self.pending = Some(b);
                    self.failed();
                }
            },
            Sink::S3(_) => {
                let full = self.queue.len() >= self.cfg.max_spool_files
                    || self.spool_bytes + b.gz.len() as u64 > self.cfg.max_spool_bytes;
                // An empty spool always takes one batch, so a batch larger than the byte bound
                // cannot wedge the writer.
                if full && !self.queue.is_empty() {
                    warn!(
                        files = self.queue.len(),
                        bytes = self.spool_bytes,
                        "cdr: spool full, applying backpressure"
                    );
                    self.pending = Some(b);
                    if self.retry_at.is_none() {
                        self.failed();
                    }
                } else if let Err(e) = self.spool(&b) {
                    warn!(key = %b.key, "cdr: cannot write spool file, will retry: {e}");
                    self.pending = Some(b);
                    self.failed();
                } else if self.retry_at.is_none() {
                    self.drain_spool().await;
                }
            }
        }
        self.backpressure
            .store(self.pending.is_some(), Ordering::Relaxed);
    }

    fn spool(&mut self, b: &Batch) -> Result<(), CdrError> {
        write_atomic(&self.cfg.spool_dir.join(&b.key), &b.gz)?;
        // The spool file holds the batch now (fsynced): its journal has done its job.
        if let Some(j) = &b.journal {
            journal::remove(j);
        }
        self.queue.push_back(Spooled {
            key: b.key.clone(),
            len: b.gz.len() as u64,
        });
        self.spool_bytes += b.gz.len() as u64;
        self.publish_spool();
        Ok(())
    }

    fn publish_spool(&self) {
        self.stats
            .spool_files
            .store(self.queue.len() as u64, Ordering::Relaxed);
        self.stats
            .spool_bytes
            .store(self.spool_bytes, Ordering::Relaxed);
    }

    /// Retry timer fired (or a flush): spool first (oldest first), then the held batch.
    async fn retry_now(&mut self) {
        self.retry_at = None;
        if matches!(self.sink, Sink::S3(_)) {
            self.drain_spool().await;
        }
        if self.retry_at.is_none() && self.pending.is_some() {
            self.place().await;
        }
        self.backpressure
            .store(self.pending.is_some(), Ordering::Relaxed);
    }

    /// Uploads spooled batches in order until one fails (then arms the back-off).
    async fn drain_spool(&mut self) {
        let Sink::S3(bucket) = &self.sink else { return };
        while let Some(s) = self.queue.front() {
            let path = self.cfg.spool_dir.join(&s.key);
            let object = format!("{}{}", self.cfg.s3_prefix, s.key);
            let r = match std::fs::read(&path) {
                Ok(body) => put(bucket, &object, &body, self.cfg.s3_timeout_ms).await,
                Err(e) => Err(format!("reading spool file {}: {e}", path.display())),
            };
            match r {
                Ok(()) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        // Uploaded; a leftover file would be uploaded again to the same key
                        // (an overwrite, not a duplicate).
                        warn!(path = %path.display(), "cdr: cannot remove uploaded spool file: {e}");
                    }
                    self.spool_bytes = self.spool_bytes.saturating_sub(s.len);
                    self.queue.pop_front();
                    self.publish_spool();
                    self.stats.batches_written.fetch_add(1, Ordering::Relaxed);
                    self.delay = INITIAL_RETRY;
                    self.retry_at = None;
                }
                Err(e) => {
                    warn!(key = %object, pending = self.queue.len(), "cdr: upload failed, retrying in {:?}: {e}", self.delay);
                    self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                    self.retry_at = Some(Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(Duration::from_millis(self.cfg.retry_max_ms));
                    return;
                }
            }
        }
    }

    fn ok(&mut self) {
        self.delay = INITIAL_RETRY;
        self.retry_at = None;
    }

    fn failed(&mut self) {
        self.retry_at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(Duration::from_millis(self.cfg.retry_max_ms));
    }

    /// Places the open batches an earlier process journalled and never closed (it crashed),
    /// each under the key it would have had. Runs before the writer takes records. A batch
    /// that cannot be placed now stays in its journal for the next start (logged).
    fn recover_journals(&mut self) {
        for l in journal::leftovers(&journal_dir(&self.cfg), &self.instance) {
            if l.records == 0 {
                journal::remove(&l.path);
                continue;
            }
            info!(key = %l.key, records = l.records, "cdr: placing a batch journalled by an earlier run");
            self.stats
                .journal_recovered_records
                .fetch_add(l.records, Ordering::Relaxed);
            let b = Batch {
                gz: gzip(&l.lines, self.cfg.gzip_level),
                key: l.key,
                records: l.records,
                journal: Some(l.path),
            };
            self.stats.batches_closed.fetch_add(1, Ordering::Relaxed);
            let placed = match &self.sink {
                Sink::Local(dir) => write_atomic(&dir.join(&b.key), &b.gz).map(|()| {
                    if let Some(j) = &b.journal {
                        journal::remove(j);
                    }
                    self.stats.batches_written.fetch_add(1, Ordering::Relaxed);
                }),
                // Queued for upload like any spooled batch (the spool bound does not apply:
                // these records were taken already).
                Sink::S3(_) => self.spool(&b),
            };
            if let Err(e) = placed {
                warn!(key = %b.key, "cdr: cannot place a journalled batch, left for the next start: {e}");
            }
        }
    }

    /// Queues the spool files an earlier run left (oldest key first); removes stale temp files.
    fn scan_spool(&mut self) -> Result<(), CdrError> {
        let mut found = Vec::new();
        walk(&self.cfg.spool_dir, &mut found)?;
        found.sort();
        for path in found {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A crash between write and rename: the batch was never acknowledged as
                // spooled, and never uploaded.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".ndjson.gz") {
                continue;
            }
            let Ok(rel) = path.strip_prefix(&self.cfg.spool_dir) else {
                continue;
            };
            let Some(key) = rel.to_str().map(|s| s.replace('\\', "/")) else {
                continue;
            };
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.spool_bytes += len;
            self.queue.push_back(Spooled { key, len });
        }
        self.publish_spool();
        Ok(())
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CdrError> {
    let rd = std::fs::read_dir(dir).map_err(|e| CdrError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out)?,
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    Ok(())
}

async fn put(b: &s3::Bucket, key: &str, body: &[u8], timeout_ms: u64) -> Result<(), String> {
    let t = Duration::from_millis(timeout_ms);
    let r = tokio::time::timeout(t, b.put_object(key, body))
        .await
        .map_err(|_| format!("PUT timed out after {t:?}"))?
        .map_err(|e| e.to_string())?;
    // Built without `fail-on-err`: errors arrive as Ok with their status.
    let st = r.status_code();
    if (200..300).contains(&st) {
        Ok(())
    } else {
        let body = String::from_utf8_lossy(r.as_slice());
        Err(format!(
            "PUT answered {st}: {}",
            body.chars().take(200).collect::<String>()
        ))
    }
}

fn bucket(cfg: &CdrConfig) -> Result<Box<s3::Bucket>, CdrError> {
    let region = if cfg.s3_endpoint.is_empty() {
        cfg.s3_region
            .parse()
            .map_err(|e| CdrError::Config(format!("s3_region {:?}: {e}", cfg.s3_region)))?
    } else {
        s3::Region::Custom {
            region: cfg.s3_region.clone(),
            endpoint: cfg.s3_endpoint.clone(),
        }
    };
    let read = |p: &Option<PathBuf>| -> Result<Option<String>, CdrError> {
        match p {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|e| CdrError::Io {
                    path: p.clone(),
                    source: e,
                }),
        }
    };
    let (ak, sk) = (
        read(&cfg.s3_access_key_file)?,
        read(&cfg.s3_secret_key_file)?,
    );
    // No key files: the credentials chain reads the AWS_* environment / profile.
    let creds = s3::creds::Credentials::new(ak.as_deref(), sk.as_deref(), None, None, None)
        .map_err(|e| CdrError::S3(format!("credentials: {e}")))?;
    let b =
        s3::Bucket::new(&cfg.s3_bucket, region, creds).map_err(|e| CdrError::S3(e.to_string()))?;
    let b = if cfg.s3_path_style {
        b.with_path_style()
    } else {
        b
    };
    b.with_request_timeout(Duration::from_millis(cfg.s3_timeout_ms))
        .map_err(|e| CdrError::S3(e.to_string()))
}

fn mkdir(p: &Path) -> Result<(), CdrError> {
    std::fs::create_dir_all(p).map_err(|e| CdrError::Io {
        path: p.to_owned(),
        source: e,
    })
}

/// Writes `path` via a fsynced temp file in the same directory and a rename, so a reader (or
/// the spool scan after a crash) sees the whole file or none.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CdrError> {
    let io = |e| CdrError::Io {
        path: path.to_owned(),
        source: e,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("batch");
    let tmp = dir.join(format!(".{name}.tmp"));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io)
}

/// Where the open batch is journalled: `<dir>/.journal` (local sink) or
/// `<spool_dir>/.journal` (S3), so that it lives with this instance's other CDR files.
fn journal_dir(cfg: &CdrConfig) -> PathBuf {
    match cfg.sink {
        SinkKind::Local => cfg.dir.join(".journal"),
        SinkKind::S3 => cfg.spool_dir.join(".journal"),
    }
}

fn gzip(ndjson: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(ndjson.len() / 4),
        flate2::Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(ndjson)
        .and_then(|()| enc.finish())
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `cdr/dt=YYYY-MM-DD/hr=HH/<instance>-<first_ms>-<seq>.ndjson.gz`, UTC, from the time the
/// batch's first record arrived. `seq` restarts at 0 per process; `first_ms` keeps keys of
/// different runs apart.
pub fn batch_key(instance: &str, first_ms: u64, seq: u64) -> String {
    let secs = first_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let hr = (secs % 86_400) / 3600;
    format!("cdr/dt={y:04}-{m:02}-{d:02}/hr={hr:02}/{instance}-{first_ms}-{seq}.ndjson.gz")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_partitioned_by_utc_date_and_hour() {
        assert_eq!(
            batch_key("gw-1", 0, 0),
            "cdr/dt=1970-01-01/hr=00/gw-1-0-0.ndjson.gz"
        );
        // 2024-02-29T23:59:59.999Z (leap day).
        assert_eq!(
            batch_key("gw-1", 1_709_251_199_999, 7),
            "cdr/dt=2024-02-29/hr=23/gw-1-1709251199999-7.ndjson.gz"
        );
        // 2026-11-26T01:00:00Z
        assert_eq!(
            batch_key("a", 1_795_654_800_000, 1),
            "cdr/dt=2026-11-26/hr=01/a-1795654800000-1.ndjson.gz"
        );
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<CdrConfig>("nope = 1").is_err());
        let c: CdrConfig = toml::from_str("sink = \"s3\"").unwrap();
        assert!(c.validate().is_err(), "s3 without bucket");
        let c: CdrConfig = toml::from_str("batch_max_records = 0").unwrap();
        assert!(c.validate().is_err());
        let c: CdrConfig = toml::from_str("gzip_level = 10").unwrap();
        assert!(c.validate().is_err());
        let c: CdrConfig = toml::from_str("gzip_level = 9").unwrap();
        assert!(c.validate().is_ok());
        assert!(CdrConfig::default().validate().is_ok());
    }
}
