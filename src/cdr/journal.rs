//! Crash journal of the open CDR batch.
//!
//! The writer builds a batch in memory for up to `flush_interval_ms` (default 60 s) or
//! `batch_max_records` (10,000) before it compresses and places it. Without this journal a
//! crash (SIGKILL, OOM kill, panic) lost that whole open batch: billing records of messages
//! that were delivered and acknowledged. Now every line of the open batch is also appended to
//! `<journal dir>/<batch file name>.open` (`<dir>/.journal` for the local sink,
//! `<spool_dir>/.journal` for S3), whose first line is the batch's final key.
//!
//! * Appends are buffered and written to the OS (one `write`) whenever the writer's channel is
//!   empty, or every [`FLUSH_BYTES`] / [`FLUSH_EVERY`] under sustained load; so a process crash
//!   loses only CDRs not yet taken from the channel (the writer takes them in bursts at most
//!   ~1 ms apart) and those in the emit overflow. The file
//!   is `fdatasync`ed at most once per [`SYNC_EVERY`] while records arrive: a power loss may
//!   lose the CDRs written since.
//! * Before a batch is closed the journal is flushed, so the file holds exactly the batch's
//!   lines; it is removed only once the batch is placed (local file written, or spooled).
//! * At start, [`leftovers`] returns every journal an earlier process of the same instance id
//!   left (another instance sharing the directory may be alive and still writing its own:
//!   never touched); the writer places
//!   each under the key in its first line. A crash after placing but before the removal makes
//!   the next start place the same lines under the same key again: an overwrite, never a
//!   duplicate. A torn last line (the crash hit a write) is cut off: it was never a complete
//!   record in the journal, and its CDR was still in memory only.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::warn;

/// Buffered journal bytes that force a write even while the channel stays busy.
pub(super) const FLUSH_BYTES: usize = 64 << 10;
/// Longest a complete line waits in the buffer under sustained load.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Longest time between two `fdatasync` of the journal while records arrive.
pub(super) const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Largest journal read back at start (a batch is bounded by `batch_max_bytes`, ≤ 1 GiB by
/// validation; this guards against a foreign huge file in the directory).
const MAX_LEFTOVER_BYTES: u64 = 2 << 30;
const SUFFIX: &str = ".open";

/// The journal of the open batch (at most one file at a time).
pub(super) struct Journal {
    dir: PathBuf,
    file: Option<(PathBuf, File)>,
    pending: Vec<u8>,
    last_write: Instant,
    last_sync: Instant,
    /// Bytes written since the last sync.
    unsynced: bool,
}

impl Journal {
    pub(super) fn new(dir: PathBuf) -> Journal {
        Journal {
            dir,
            file: None,
            pending: Vec::new(),
            last_write: Instant::now(),
            last_sync: Instant::now(),
            unsynced: false,
        }
    }

    /// Starts the journal of a new batch whose final key is `key`. On an I/O error the batch
    /// runs without a journal (logged, `false`): CDR export goes on, only the crash protection
    /// of this one batch is lost.
    pub(super) fn begin(&mut self, key: &str) -> bool {
        self.discard();
        let name = key.rsplit('/').next().unwrap_or(key);
        let path = self.dir.join(format!("{name}{SUFFIX}"));
        let opened = std::fs::create_dir_all(&self.dir)
            .and_then(|()| File::create(&path))
            .and_then(|mut f| {
                f.write_all(key.as_bytes())?;
                f.write_all(b"\n")?;
                Ok(f)
            });
        match opened {
            Ok(f) => {
                self.file = Some((path, f));
                self.last_write = Instant::now();
                true
            }
            Err(e) => {
                warn!(path = %path.display(), "cdr: cannot start the batch journal (a crash would lose this batch): {e}");
                let _ = std::fs::remove_file(&path);
                false
            }
        }
    }

    /// Buffers one NDJSON line (without its newline).
    pub(super) fn append(&mut self, line: &[u8]) {
        if self.file.is_some() {
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
        }
    }

    /// Whether the buffer should be written now although more records are queued.
    pub(super) fn flush_due(&self) -> bool {
        !self.pending.is_empty()
            && (self.pending.len() >= FLUSH_BYTES || self.last_write.elapsed() >= FLUSH_EVERY)
    }

    /// Writes the buffered lines to the OS; syncs when the last sync is [`SYNC_EVERY`] old.
    /// `false` when the write failed: the journal of this batch is dropped (logged).
    pub(super) fn flush(&mut self) -> bool {
        let Some((path, f)) = &mut self.file else {
            self.pending.clear();
            return true;
        };
        if !self.pending.is_empty() {
            if let Err(e) = f.write_all(&self.pending) {
                warn!(path = %path.display(), "cdr: batch journal write failed (a crash would lose this batch): {e}");
                self.discard();
                return false;
            }
            self.pending.clear();
            self.unsynced = true;
            self.last_write = Instant::now();
        }
        if self.unsynced && self.last_sync.elapsed() >= SYNC_EVERY {
            // Best effort: a failed sync leaves the lines with the OS (process-crash safe).
            let _ = f.sync_data();
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        true
    }

    /// Flushes and closes the journal of the batch being closed; the returned path is removed
    /// (with [`remove`]) once that batch is placed.
    pub(super) fn close(&mut self) -> Option<PathBuf> {
        // A failed write drops the file: `None` then (the batch has no journal).
        self.flush();
        self.unsynced = false;
        self.file.take().map(|(p, _)| p)
    }

    /// Drops the current journal file (its batch needs no crash protection any more).
    fn discard(&mut self) {
        self.pending.clear();
        if let Some((p, _)) = self.file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes the journal of a placed batch.
pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        // Harmless: the next start places the same lines under the same key again.
        warn!(path = %path.display(), "cdr: cannot remove the journal of a placed batch: {e}");
    }
}

/// An open batch an earlier process left behind.
pub(super) struct Leftover {
    pub path: PathBuf,
    pub key: String,
    /// Complete NDJSON lines (a torn tail cut off).
    pub lines: Vec<u8>,
    pub records: u64,
}

/// Journals left in `dir` by an earlier process of `instance`, oldest key first. Files that
/// are not journals, belong to another instance, or whose key line is not a CDR batch key, are
/// left alone (the last logged).
pub(super) fn leftovers(dir: &Path, instance: &str) -> Vec<Leftover> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        // `<instance>-<first_ms>-<seq>.ndjson.gz.open`; the instance id may contain '-'.
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.strip_suffix(".ndjson.gz"))
            .and_then(|n| n.rsplitn(3, '-').nth(2))
            .is_some_and(|i| i == instance);
        if !ours || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if e.metadata().map(|m| m.len()).unwrap_or(0) > MAX_LEFTOVER_BYTES {
            warn!(path = %path.display(), "cdr: journal too large to recover, left in place");
            continue;
        }
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(err) => {
                warn!(path = %path.display(), "cdr: cannot read a left-over journal: {err}");
                continue;
            }
        };
        match parse(&data) {
            Some((key, lines)) if key.ends_with(&format!("/{}", name_of(&path))) => {
                let records = lines.iter().filter(|&&b| b == b'\n').count() as u64;
                out.push(Leftover {
                    path,
                    key,
                    lines: lines.to_vec(),
                    records,
                });
            }
            _ => {
                warn!(path = %path.display(), "cdr: left-over journal without a valid key line (or one naming another file), left in place");
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The batch file name a journal stands for (its own name without the suffix).
fn name_of(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(SUFFIX))
        .unwrap_or("")
}

/// Splits a journal into its key and its complete lines.
fn parse(data: &[u8]) -> Option<(String, &[u8])> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    let key = std::str::from_utf8(&data[..nl]).ok()?;
    let valid = key.starts_with("cdr/dt=")
        && key.ends_with(".ndjson.gz")
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'=' | b'-' | b'_' | b'.'));
    if !valid {
        return None;
    }
    let body = &data[nl + 1..];
    let complete = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Some((key.to_owned(), &body[..complete]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cdr/dt=2026-11-26/hr=05/gw-1-1795669200000-3.ndjson.gz";

    #[test]
    fn journal_holds_exactly_the_flushed_lines_and_survives_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::new(dir.path().join("open"));
        j.begin(KEY);
        j.append(br#"{"a":1}"#);
        j.append(br#"{"a":2}"#);
        // Not yet written: a crash now would lose these two (they are in memory only).
        assert_eq!(leftovers(&dir.path().join("open"), "gw-1")[0].records, 0);
        j.flush();
        j.append(br#"{"a":3}"#);
        // "Crash": the journal is dropped without close; only flushed lines count.
        drop(j);
        let l = leftovers(&dir.path().join("open"), "gw-1");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].key, KEY);
        assert_eq!(l[0].records, 2);
        assert_eq!(l[0].lines, b"{\"a\":1}\n{\"a\":2}\n");
        assert!(l[0].path.ends_with("gw-1-1795669200000-3.ndjson.gz.open"));
    }

    #[test]
    fn close_flushes_and_begin_of_next_batch_keeps_the_closed_one_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let mut j = Journal::new(open.clone());
        j.begin(KEY);
        j.append(b"x");
        let closed = j.close().expect("journal path");
        let next = KEY.replace("-3.ndjson", "-4.ndjson");
        j.begin(&next);
        // The closed batch is not placed yet: both journals are there.
        assert_eq!(leftovers(&open, "gw-1").len(), 2);
        remove(&closed);
        let l = leftovers(&open, "gw-1");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].key, next);
        assert_eq!(l[0].records, 0);
    }

    #[test]
    fn torn_tail_is_cut_and_foreign_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gw-1-1795669200000-3.ndjson.gz.open");
        std::fs::write(&p, format!("{KEY}\n{{\"a\":1}}\n{{\"a\":")).unwrap();
        let evil = dir.path().join("gw-1-1-1.ndjson.gz.open");
        std::fs::write(&evil, "cdr/dt=../../etc/gw-1-1-1.ndjson.gz\nx\n").unwrap();
        // A key naming another batch than the file: not ours to place.
        let other = dir.path().join("gw-1-2-2.ndjson.gz.open");
        std::fs::write(&other, format!("{KEY}\nx\n")).unwrap();
        // Another instance sharing the directory (maybe alive): never touched.
        let theirs = dir.path().join("gw-12-1795669200000-3.ndjson.gz.open");
        std::fs::write(&theirs, format!("{}\nx\n", KEY.replace("gw-1-", "gw-12-"))).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        let l = leftovers(dir.path(), "gw-1");
        assert_eq!(l.len(), 1, "only the valid journal of gw-1");
        assert_eq!(l[0].lines, b"{\"a\":1}\n");
        assert_eq!(l[0].records, 1);
        assert_eq!(leftovers(dir.path(), "gw-12").len(), 1);
        assert!(evil.exists() && other.exists() && theirs.exists());
    }

    #[test]
    fn flush_is_due_by_size_or_age_only_with_pending_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::new(dir.path().to_path_buf());
        j.begin(KEY);
        assert!(!j.flush_due());
        j.append(&vec![b'x'; FLUSH_BYTES]);
        assert!(j.flush_due());
        j.flush();
        assert!(!j.flush_due());
        j.append(b"y");
        std::thread::sleep(FLUSH_EVERY + Duration::from_millis(1));
        assert!(j.flush_due());
    }
}
