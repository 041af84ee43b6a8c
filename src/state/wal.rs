//! Per-thread ("lane") append-only write-ahead log of the journal state backend.
//!
//! The store mutates records in memory on the calling thread (a monoio shard or a tokio
//! side-runtime thread) and appends one event frame per change to that thread's **lane**; the
//! op's future then waits until the frame is durable ([`Wal::durable`]). Lanes exist so shard
//! threads never contend with each other and, in the common case, never hop to another thread:
//!
//! * `sync == false` (durable = written to the OS): the future yields once (so the other ready
//!   tasks of the same event-loop turn append their frames too), then writes the lane's whole
//!   buffer itself: one `write(2)` per lane per turn, no thread hop.
//! * `sync == true` (durable = fdatasync'ed): each lane has a sync thread (`state-wal-<lane>`)
//!   that writes and fdatasyncs whatever accumulated and wakes the futures it made durable.
//!   While one fdatasync runs, new frames accumulate: group commit happens by itself.
//!
//! # Files
//!
//! Segment `<generation:016x>-<lane:04x>.wal`, starting with the magic `SMSGWAL1`, then frames
//! `len: u32 LE, crc32: u32 LE, payload`. Every segment file gets a generation of its own from
//! one counter (above every file found at open), so per lane the generations order the frames,
//! and a segment opened after a [`Wal::rotate`] sorts after every segment that rotate sealed.
//! Positions ([`Pos`]) are offsets in a lane's frame stream (magic bytes not counted), valid
//! for this `Wal` instance only.
//!
//! # Failures
//!
//! A write or fdatasync error fails the lane: not-yet-durable futures answer
//! [`StateError::Unavailable`], appends too, [`Wal::is_healthy`] is false. The not-durable bytes
//! are kept; recovery (every 20 ms doubling to 1 s, from [`Wal::flush_buffers`] or the sync
//! thread) cuts the failed segment back to its durable length (best effort), seals it, and
//! writes the kept bytes into a new segment. So after a failure a frame may exist twice only
//! if that cut itself failed (or was lost with power) and the frame's op was answered
//! `Unavailable` ("outcome unknown"): replay must tolerate a repeated frame.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::StateError;

/// First 8 bytes of every segment file.
const MAGIC: &[u8; 8] = b"SMSGWAL1";
/// Frame header: payload length and CRC32, both u32 little-endian.
const HEADER: usize = 8;
/// Largest frame payload the reader accepts (and the cap of `max_frame_bytes`): a longer
/// length field is garbage, not a frame.
pub const MAX_FRAME_LIMIT: usize = 16 << 20;
/// Lane numbers are 4 hex digits in the file name.
const MAX_LANES_LIMIT: usize = 1 << 16;
/// Recovery back-off after a failure: first retry after 20 ms, doubling up to 1 s.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// A write buffer that grew past this during a burst is shrunk back to `BUF_KEEP` once empty,
/// so one burst does not pin 64 MiB per lane for the life of the process.
const BUF_SHRINK_ABOVE: usize = 4 << 20;
const BUF_KEEP: usize = 256 << 10;

/// Ids of `Wal` instances (thread-local lane cache keys): never reused within a process.
static NEXT_WAL_ID: AtomicU64 = AtomicU64::new(1);

/// Configuration of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory of the segment files; created if missing.
    pub dir: PathBuf,
    /// True: a position is durable once fdatasync'ed; false: once written to the OS
    /// (`write(2)` returned).
    pub sync: bool,
    /// Most lanes (default 64, at most 65536); threads beyond it share lanes (by a hash of
    /// the thread id).
    pub max_lanes: usize,
    /// Most not-yet-durable bytes per lane (default 64 MiB); `append` beyond answers
    /// [`StateError::Overloaded`].
    pub max_lane_buffer_bytes: usize,
    /// Largest payload (default 1 MiB, at most 16 MiB); bigger answers [`StateError::Invalid`].
    pub max_frame_bytes: usize,
}

impl WalConfig {
    /// Defaults for everything but `dir` and `sync`.
    pub fn new(dir: PathBuf, sync: bool) -> WalConfig {
        WalConfig {
            dir,
            sync,
            max_lanes: 64,
            max_lane_buffer_bytes: 64 << 20,
            max_frame_bytes: 1 << 20,
        }
    }
}

/// Logical position: end offset of a frame in its lane's byte stream (monotonic across
/// segments of that lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Lane index.
    pub lane: u32,
    /// End offset of the frame in the lane's stream.
    pub end: u64,
}

/// What [`read_segment`] found. `bytes + cut_bytes` is the file's length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Intact frames passed to the callback.
    pub frames: u64,
    /// Bytes accepted: the magic and the intact frames.
    pub bytes: u64,
    /// Ignored tail: the first torn or corrupt frame and everything after it (the whole file
    /// when the magic is missing).
    pub cut_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lane lock cannot leave a half-applied state that matters more
    // than losing the log altogether: keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(msg: impl Into<String>) -> StateError {
    StateError::Unavailable(msg.into())
}

fn io_error(what: &str, path: &Path, e: io::Error) -> StateError {
    unavailable(format!("wal: {what} {}: {e}", path.display()))
}

/// State shared by the `Wal`, its lanes, their sync threads and futures.
struct Shared {
    dir: PathBuf,
    sync: bool,
    max_buffer: u64,
    /// Generation of the next segment file (one per file).
    next_gen: AtomicU64,
    /// Closed segments not yet removed: (generation, path).
    sealed: Mutex<Vec<(u64, PathBuf)>>,
    /// Test hook: this many next segment writes / fdatasyncs fail.
    fail_writes: AtomicU64,
    /// Test hook: this many next fdatasyncs fail (writes succeed).
    fail_syncs: AtomicU64,
    /// Segment frame writes (`write_all` calls) and fdatasyncs so far (tests, benches).
    writes: AtomicU64,
    syncs: AtomicU64,
}

impl Shared {
    fn seal(&self, generation: u64, path: PathBuf) {
        lock(&self.sealed).push((generation, path));
    }

    fn take_injected(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Creates a new segment (fresh generation) with its magic; with `sync` also fsyncs the
    /// directory so the file survives power loss. A file that was created but could not be
    /// initialised is sealed (it reads as 0 frames and is removable).
    fn open_segment(&self, lane: u32) -> io::Result<Segment> {
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(segment_name(generation, lane));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let init = file.write_all(MAGIC).and_then(|()| {
            if self.sync {
                sync_dir(&self.dir)
            } else {
                Ok(())
            }
        });
        if let Err(e) = init {
            self.seal(generation, path);
            return Err(e);
        }
        let len = MAGIC.len() as u64;
        Ok(Segment {
            file,
            path,
            generation,
            len,
            good_len: len,
            synced_len: 0,
        })
    }

    /// Writes `data` at the end of `file`; answers how many bytes reached the OS before an
    /// error (so the caller knows which frames made it).
    fn write_segment(&self, file: &mut File, data: &[u8]) -> (usize, io::Result<()>) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if Self::take_injected(&self.fail_writes) {
            return (0, Err(io::Error::other("injected write failure")));
        }
        let mut done = 0;
        while done < data.len() {
            match file.write(&data[done..]) {
                Ok(0) => {
                    return (
                        done,
                        Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                    );
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    fn sync_segment(&self, file: &File) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if Self::take_injected(&self.fail_writes) || Self::take_injected(&self.fail_syncs) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        file.sync_data()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn segment_name(generation: u64, lane: u32) -> String {
    format!("{generation:016x}-{lane:04x}.wal")
}

/// `(generation, lane)` of a segment file name, `None` for any other file.
fn parse_segment_name(name: &str) -> Option<(u64, u32)> {
    let (g, l) = name.strip_suffix(".wal")?.split_once('-')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(g, 16) || !hex(l, 4) {
        return None;
    }
    Some((
        u64::from_str_radix(g, 16).ok()?,
        u32::from_str_radix(l, 16).ok()?,
    ))
}

/// The current segment of a lane.
struct Segment {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Bytes written to the file (magic included).
    len: u64,
    /// Length up to which the content is durable per the mode: where a failed segment is cut.
    good_len: u64,
    /// Length covered by the last successful fdatasync.
    synced_len: u64,
}

/// Frames appended and not yet taken by a writer.
struct Buf {
    data: Vec<u8>,
    /// Stream offset after the last appended frame.
    end: u64,
}

/// Writer side of a lane; held while writing, so appends (which lock only `Buf`) never wait
/// for I/O.
struct Io {
    seg: Option<Segment>,
    /// Frames taken from the buffer and not yet durable; kept across failures.
    pending: Vec<u8>,
    /// Stream offset of `pending[0]`.
    pending_start: u64,
    /// Prefix of `pending` already written to `seg` (sync mode: written, not yet synced).
    pending_written: usize,
    /// Back-off of the next recovery attempt, and when it is due (`Some` while failed).
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Io {
    fn pending_end(&self) -> u64 {
        self.pending_start + self.pending.len() as u64
    }

    /// Everything pending is durable: forget it.
    fn clear_pending(&mut self) {
        self.pending_start = self.pending_end();
        self.pending.clear();
        self.pending_written = 0;
        if self.pending.capacity() > BUF_SHRINK_ABOVE {
            self.pending.shrink_to(BUF_KEEP);
        }
    }
}

/// Futures waiting for a sync-mode lane, and the sync thread's flags.
struct Waiters {
    list: Vec<Waiter>,
    next_id: u64,
    /// The sync thread is blocked on the condvar: only then does a new waiter notify it.
    sleeping: bool,
    /// `flush_buffers` asked for the buffer to be written even without waiters.
    flush: bool,
    stop: bool,
}

struct Waiter {
    id: u64,
    end: u64,
    waker: Waker,
}

struct Lane {
    index: u32,
    shared: Arc<Shared>,
    buf: Mutex<Buf>,
    io: Mutex<Io>,
    waiters: Mutex<Waiters>,
    cv: Condvar,
    /// Last error text (read on error paths only).
    error: Mutex<String>,
    /// `Buf::end`, readable without the lock.
    appended: AtomicU64,
    /// Stream offset written to the OS / covered by fdatasync.
    written: AtomicU64,
    synced: AtomicU64,
    failed: AtomicBool,
    /// Positions up to here that are not durable failed (their futures answered Unavailable).
    failed_upto: AtomicU64,
    /// The `Wal` is gone: nothing more will be written.
    closed: AtomicBool,
    /// `appended` as of the last rotate (for `unrotated_bytes`).
    rotated_at: AtomicU64,
    /// `written` as seen by the previous `flush_buffers` that found unwritten bytes.
    flush_mark: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Lane {
    fn new(index: u32, shared: Arc<Shared>) -> Lane {
        Lane {
            index,
            shared,
            buf: Mutex::new(Buf {
                data: Vec::new(),
                end: 0,
            }),
            io: Mutex::new(Io {
                seg: None,
                pending: Vec::new(),
                pending_start: 0,
                pending_written: 0,
                backoff: RETRY_MIN,
                retry_at: None,
            }),
            waiters: Mutex::new(Waiters {
                list: Vec::new(),
                next_id: 0,
                sleeping: false,
                flush: false,
                stop: false,
            }),
            cv: Condvar::new(),
            error: Mutex::new(String::new()),
            appended: AtomicU64::new(0),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failed_upto: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            rotated_at: AtomicU64::new(0),
            flush_mark: AtomicU64::new(0),
            thread: Mutex::new(None),
        }
    }

    fn durable_end(&self) -> u64 {
        if self.shared.sync {
            self.synced.load(Ordering::Acquire)
        } else {
            self.written.load(Ordering::Acquire)
        }
    }

    fn error_text(&self) -> String {
        let e = lock(&self.error);
        if e.is_empty() {
            format!("wal lane {} failed", self.index)
        } else {
            e.clone()
        }
    }

    /// The outcome of position `end`, if decided. Durable wins: a frame that made it is
    /// reported as such even if the lane failed later.
    fn outcome(&self, end: u64) -> Option<Result<(), StateError>> {
        if self.durable_end() >= end {
            return Some(Ok(()));
        }
        if self.failed.load(Ordering::Acquire) || end <= self.failed_upto.load(Ordering::Acquire) {
            return Some(Err(unavailable(self.error_text())));
        }
        if self.closed.load(Ordering::Acquire) {
            return Some(Err(unavailable("wal: closed before the frame was durable")));
        }
        None
    }

    fn append(&self, payload: &[u8], max_buffer: u64) -> Result<Pos, StateError> {
        let crc = crc32fast::hash(payload);
        let frame = (HEADER + payload.len()) as u64;
        let mut b = lock(&self.buf);
        if self.failed.load(Ordering::Acquire) {
            return Err(unavailable(self.error_text()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(unavailable("wal: closed"));
        }
        // Not-yet-durable bytes: the buffer plus what a writer took and has not finished.
        if (b.end + frame).saturating_sub(self.durable_end()) > max_buffer {
            return Err(StateError::Overloaded);
        }
        b.data.reserve(HEADER + payload.len());
        b.data
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.data.extend_from_slice(&crc.to_le_bytes());
        b.data.extend_from_slice(payload);
        b.end += frame;
        self.appended.store(b.end, Ordering::Release);
        Ok(Pos {
            lane: self.index,
            end: b.end,
        })
    }

    /// Moves the buffered frames to `io.pending`; answers the stream end they reach.
    fn take_buffer(&self, io: &mut Io) -> u64 {
        let mut b = lock(&self.buf);
        if !b.data.is_empty() {
            if io.pending.is_empty() {
                // Swap, not copy: the buffer gets pending's (empty, already allocated) vector.
                std::mem::swap(&mut io.pending, &mut b.data);
            } else {
                io.pending.extend_from_slice(&b.data);
                b.data.clear();
            }
        }
        b.end
    }

    /// Writes everything buffered into the current segment (opening one if needed) and, with
    /// `sync`, fdatasyncs it. Refuses while failed or closed. `Ok(end)`: the stream is written
    /// (and synced when asked) up to `end`. On an I/O error the lane fails.
    fn write_out(&self, io: &mut Io, sync: bool) -> Result<u64, String> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.error_text());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err("wal: closed".into());
        }
        self.write_pending(io, sync)
    }

    fn write_pending(&self, io: &mut Io, sync: bool) -> Result<u64, String> {
        let end = self.take_buffer(io);
        debug_assert_eq!(io.pending_end(), end);
        if io.pending_written < io.pending.len() {
            if io.seg.is_none() {
                match self.shared.open_segment(self.index) {
                    Ok(s) => io.seg = Some(s),
                    Err(e) => return Err(self.fail(io, "cannot create a segment in", e, 0)),
                }
            }
            let Some(seg) = io.seg.as_mut() else {
                return Err(self.error_text());
            };
            let (n, r) = self
                .shared
                .write_segment(&mut seg.file, &io.pending[io.pending_written..]);
            if let Err(e) = r {
                return Err(self.fail(io, "cannot write", e, n));
            }
            seg.len += n as u64;
            io.pending_written = io.pending.len();
            self.written.store(end, Ordering::Release);
            if !self.shared.sync {
                // Off mode: written is durable.
                seg.good_len = seg.len;
                io.clear_pending();
            }
        }
        if sync
            && let Some(seg) = io.seg.as_mut()
            && seg.synced_len < seg.len
        {
            if let Err(e) = self.shared.sync_segment(&seg.file) {
                return Err(self.fail(io, "cannot fdatasync", e, 0));
            }
            seg.synced_len = seg.len;
            seg.good_len = seg.len;
        }
        if sync {
            io.clear_pending();
            self.synced.store(end, Ordering::Release);
        }
        Ok(end)
    }

    /// Marks the lane failed after an I/O error; `landed` bytes of the unwritten part of
    /// `pending` reached the file before the error. Answers the error text.
    fn fail(&self, io: &mut Io, what: &str, e: io::Error, landed: usize) -> String {
        let path = io.seg.as_ref().map_or_else(
            || self.shared.dir.display().to_string(),
            |s| s.path.display().to_string(),
        );
        if let Some(seg) = io.seg.as_mut() {
            seg.len += landed as u64;
            if !self.shared.sync {
                // Whole frames that reached the OS are durable in off mode; the rest (from the
                // first torn frame on) is kept for the next segment.
                let boundary = frame_boundary(&io.pending, io.pending_written + landed);
                seg.good_len += boundary as u64;
                io.pending.drain(..boundary);
                io.pending_start += boundary as u64;
                self.written.store(io.pending_start, Ordering::Release);
            }
        }
        // Sync mode keeps everything since the last fdatasync: it is rewritten in full.
        io.pending_written = 0;
        io.backoff = if io.retry_at.is_some() {
            (io.backoff * 2).min(RETRY_MAX)
        } else {
            RETRY_MIN
        };
        io.retry_at = Some(Instant::now() + io.backoff);
        let text = format!("wal lane {}: {what} {path}: {e}", self.index);
        *lock(&self.error) = text.clone();
        {
            // Under the buffer lock: appends after this see `failed`, appends before it are
            // covered by `failed_upto`.
            let b = lock(&self.buf);
            self.failed_upto.fetch_max(b.end, Ordering::AcqRel);
            self.failed.store(true, Ordering::Release);
        }
        tracing::warn!(lane = self.index, error = %text, "wal lane failed");
        self.wake_all();
        text
    }

    /// True when a failed lane may try to recover now.
    fn recovery_due(&self, io: &Io) -> bool {
        io.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Writes out (see `write_out`); a failed lane first retries recovery if due (or `force`):
    /// cut the failed segment to its durable length, seal it, and write the kept bytes into a
    /// new segment. Success makes the lane healthy again.
    fn flush(&self, io: &mut Io, sync: bool, force: bool) -> Result<u64, String> {
        if !self.failed.load(Ordering::Acquire) {
            return self.write_out(io, sync);
        }
        if self.closed.load(Ordering::Acquire) || !(force || self.recovery_due(io)) {
            return Err(self.error_text());
        }
        if let Some(seg) = io.seg.take() {
            // Best effort: the reader cuts a torn tail anyway; this avoids a frame existing in
            // both segments after a failed fdatasync.
            let _ = seg.file.set_len(seg.good_len);
            self.shared.seal(seg.generation, seg.path);
        }
        io.pending_written = 0;
        let end = self.write_pending(io, sync || self.shared.sync)?;
        io.retry_at = None;
        io.backoff = RETRY_MIN;
        {
            let _b = lock(&self.buf);
            self.failed.store(false, Ordering::Release);
        }
        tracing::info!(lane = self.index, "wal lane recovered");
        Ok(end)
    }

    /// Wakes the waiters whose position is durable.
    fn wake_durable(&self) {
        let d = self.durable_end();
        let mut ready = Vec::new();
        {
            let mut w = lock(&self.waiters);
            let mut i = 0;
            while i < w.list.len() {
                if w.list[i].end <= d {
                    ready.push(w.list.swap_remove(i).waker);
                } else {
                    i += 1;
                }
            }
        }
        for waker in ready {
            waker.wake();
        }
    }

    /// Wakes every waiter (failure, close): each re-polls and reads its outcome.
    fn wake_all(&self) {
        let list = std::mem::take(&mut lock(&self.waiters).list);
        for w in list {
            w.waker.wake();
        }
    }
}

/// Offset of the end of the last whole frame of `frames` within its first `reached` bytes.
fn frame_boundary(frames: &[u8], reached: usize) -> usize {
    let mut off = 0;
    while off + HEADER <= frames.len() {
        let len = u32::from_le_bytes([
            frames[off],
            frames[off + 1],
            frames[off + 2],
            frames[off + 3],
        ]) as usize;
        let next = off + HEADER + len;
        if next > reached {
            break;
        }
        off = next;
    }
    off
}

/// Body of a sync-mode lane's thread: write + fdatasync what accumulated while there are
/// waiters (or a flush request), wake the futures made durable; retry recovery while failed.
fn sync_loop(lane: Arc<Lane>) {
    loop {
        {
            let mut w = lock(&lane.waiters);
            loop {
                if w.stop {
                    return;
                }
                if lane.failed.load(Ordering::Acquire) {
                    // Retry recovery when due; `flush` checks the back-off.
                    w.sleeping = true;
                    w = lane
                        .cv
                        .wait_timeout(w, RETRY_MIN)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    w.sleeping = false;
                    break;
                }
                if !w.list.is_empty() || w.flush {
                    w.flush = false;
                    break;
                }
                w.sleeping = true;
                w = lane.cv.wait(w).unwrap_or_else(PoisonError::into_inner);
                w.sleeping = false;
            }
        }
        {
            let mut io = lock(&lane.io);
            // Errors are recorded in the lane (failed flag, error text, woken futures).
            let _ = lane.flush(&mut io, true, false);
        }
        lane.wake_durable();
    }
}

thread_local! {
    /// Lane of the current thread per live `Wal` (a process may hold several).
    static LANE_CACHE: RefCell<Vec<CacheEntry>> = const { RefCell::new(Vec::new()) };
}

struct CacheEntry {
    wal: u64,
    /// Dead once the `Wal` is dropped: the entry is then pruned.
    alive: Weak<()>,
    lane: u32,
}

/// The write-ahead log. See the module docs.
pub struct Wal {
    id: u64,
    alive: Arc<()>,
    shared: Arc<Shared>,
    max_frame: usize,
    /// Lanes by index, created lazily in order; `created` of them exist.
    lanes: Box<[OnceLock<Arc<Lane>>]>,
    created: AtomicUsize,
    create_lock: Mutex<()>,
    rotate_lock: Mutex<()>,
}

/// Resolves `Ok` once a position is durable, `Err(Unavailable)` if its lane failed (or the
/// `Wal` was dropped) before. Runtime-agnostic: no tokio or monoio types inside.
pub struct DurableFuture {
    lane: Option<Arc<Lane>>,
    end: u64,
    /// Outcome decided at creation.
    ready: Option<Result<(), StateError>>,
    /// Off mode: the first poll yielded.
    yielded: bool,
    /// Sync mode: registration id and the waker registered with it.
    waiter: Option<(u64, Waker)>,
}

impl DurableFuture {
    fn done(r: Result<(), StateError>) -> DurableFuture {
        DurableFuture {
            lane: None,
            end: 0,
            ready: Some(r),
            yielded: false,
            waiter: None,
        }
    }
}

impl Future for DurableFuture {
    type Output = Result<(), StateError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(r) = this.ready.take() {
            return Poll::Ready(r);
        }
        let Some(lane) = this.lane.as_ref() else {
            return Poll::Ready(Err(unavailable("wal: future polled after completion")));
        };
        let end = this.end;
        if let Some(r) = lane.outcome(end) {
            // A registration left behind is removed by whoever decided the outcome.
            this.waiter = None;
            this.lane = None;
            return Poll::Ready(r);
        }
        if !lane.shared.sync {
            if !this.yielded {
                // Yield once so the other ready tasks of this event-loop turn append too: the
                // second poll then writes all their frames with one write(2).
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            {
                let mut io = lock(&lane.io);
                // An error is recorded in the lane and read back by `outcome`.
                let _ = lane.write_out(&mut io, false);
            }
            let r = lane
                .outcome(end)
                .unwrap_or_else(|| Err(unavailable("wal: frame not written")));
            this.lane = None;
            return Poll::Ready(r);
        }
        // Sync mode: registered with an equivalent waker already — nothing to update.
        if let Some((_, w)) = &this.waiter
            && w.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        let mut w = lock(&lane.waiters);
        // Decided meanwhile? (The sync thread stores `synced`/`failed` before taking this lock.)
        if let Some(r) = lane.outcome(end) {
            if let Some((id, _)) = this.waiter.take()
                && let Some(i) = w.list.iter().position(|x| x.id == id)
            {
                w.list.swap_remove(i);
            }
            drop(w);
            this.lane = None;
            return Poll::Ready(r);
        }
        let waker = cx.waker().clone();
        let id = match &this.waiter {
            Some((id, _)) => *id,
            None => {
                w.next_id += 1;
                w.next_id
            }
        };
        match w.list.iter_mut().find(|x| x.id == id) {
            Some(x) => x.waker = waker.clone(),
            None => w.list.push(Waiter {
                id,
                end,
                waker: waker.clone(),
            }),
        }
        this.waiter = Some((id, waker));
        if w.sleeping {
            // Only a sleeping sync thread needs the (futex) wake; a busy one re-checks the
            // waiter list before it sleeps.
            w.sleeping = false;
            lane.cv.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for DurableFuture {
    fn drop(&mut self) {
        // A cancelled sync-mode future takes its registration back, so waiters stay bounded by
        // the futures in flight.
        if let (Some(lane), Some((id, _))) = (self.lane.as_ref(), self.waiter.as_ref()) {
            let mut w = lock(&lane.waiters);
            if let Some(i) = w.list.iter().position(|x| x.id == *id) {
                w.list.swap_remove(i);
            }
        }
    }
}

impl Wal {
    /// Creates `dir` if needed. Every segment file already in `dir` is sealed (returned by the
    /// next [`Wal::rotate`] until removed); new segments get a generation above every existing
    /// one. Starts no lane yet.
    pub fn open(cfg: WalConfig) -> Result<Arc<Wal>, StateError> {
        if cfg.max_lanes == 0 || cfg.max_lanes > MAX_LANES_LIMIT {
            return Err(StateError::Invalid(format!(
                "wal: max_lanes must be 1..={MAX_LANES_LIMIT}, not {}",
                cfg.max_lanes
            )));
        }
        if cfg.max_frame_bytes == 0 || cfg.max_frame_bytes > MAX_FRAME_LIMIT {
            return Err(StateError::Invalid(format!(
                "wal: max_frame_bytes must be 1..={MAX_FRAME_LIMIT}, not {}",
                cfg.max_frame_bytes
            )));
        }
        if cfg.max_lane_buffer_bytes < cfg.max_frame_bytes + HEADER {
            return Err(StateError::Invalid(format!(
                "wal: max_lane_buffer_bytes ({}) must hold one frame of max_frame_bytes ({})",
                cfg.max_lane_buffer_bytes, cfg.max_frame_bytes
            )));
        }
        let existed = cfg.dir.is_dir();
        fs::create_dir_all(&cfg.dir).map_err(|e| io_error("cannot create", &cfg.dir, e))?;
        if cfg.sync && !existed {
            // The new directory's own entry must survive power loss too.
            if let Some(parent) = cfg.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| io_error("cannot fsync", parent, e))?;
            }
        }
        let existing = scan_segments(&cfg.dir)?;
        let next_gen = match existing.iter().map(|s| s.0).max() {
            None => 1,
            Some(g) => g.checked_add(1).ok_or_else(|| {
                StateError::Corrupt("wal: segment generation at its maximum".into())
            })?,
        };
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            sync: cfg.sync,
            max_buffer: cfg.max_lane_buffer_bytes as u64,
            next_gen: AtomicU64::new(next_gen),
            sealed: Mutex::new(existing.into_iter().map(|(g, _, p)| (g, p)).collect()),
            fail_writes: AtomicU64::new(0),
            fail_syncs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        });
        Ok(Arc::new(Wal {
            id: NEXT_WAL_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            shared,
            max_frame: cfg.max_frame_bytes,
            lanes: (0..cfg.max_lanes).map(|_| OnceLock::new()).collect(),
            created: AtomicUsize::new(0),
            create_lock: Mutex::new(()),
            rotate_lock: Mutex::new(()),
        }))
    }

    /// The lanes created so far.
    fn lanes(&self) -> impl Iterator<Item = &Arc<Lane>> {
        let n = self.created.load(Ordering::Acquire);
        self.lanes[..n].iter().filter_map(OnceLock::get)
    }

    fn lane(&self, index: u32) -> Option<&Arc<Lane>> {
        self.lanes.get(index as usize).and_then(OnceLock::get)
    }

    /// The calling thread's lane: from the thread-local cache, else assigned (and created).
    fn current_lane(&self) -> Result<&Arc<Lane>, StateError> {
        let cached = LANE_CACHE
            .try_with(|c| c.borrow().iter().find(|e| e.wal == self.id).map(|e| e.lane))
            .ok()
            .flatten();
        let index = match cached {
            Some(i) => i,
            None => {
                let i = self.assign_lane()?;
                // Fails only while the thread is exiting: then the lane is looked up again
                // next time, which is correct, just slower.
                let _ = LANE_CACHE.try_with(|c| {
                    let mut c = c.borrow_mut();
                    c.retain(|e| e.alive.strong_count() > 0);
                    c.push(CacheEntry {
                        wal: self.id,
                        alive: Arc::downgrade(&self.alive),
                        lane: i,
                    });
                });
                i
            }
        };
        self.lane(index)
            .ok_or_else(|| unavailable(format!("wal: lane {index} missing")))
    }

    /// A new lane while fewer than `max_lanes` exist, else a shared one by thread-id hash.
    fn assign_lane(&self) -> Result<u32, StateError> {
        let _g = lock(&self.create_lock);
        let n = self.created.load(Ordering::Acquire);
        if n >= self.lanes.len() {
            let h = BuildHasherDefault::<DefaultHasher>::default()
                .hash_one(std::thread::current().id());
            return Ok((h % self.lanes.len() as u64) as u32);
        }
        let index = n as u32;
        let lane = Arc::new(Lane::new(index, self.shared.clone()));
        if self.shared.sync {
            let l = lane.clone();
            let handle = std::thread::Builder::new()
                .name(format!("state-wal-{index}"))
                .spawn(move || sync_loop(l))
                .map_err(|e| unavailable(format!("wal: cannot start a sync thread: {e}")))?;
            *lock(&lane.thread) = Some(handle);
        }
        if self.lanes[n].set(lane).is_err() {
            return Err(unavailable("wal: lane created twice"));
        }
        self.created.store(n + 1, Ordering::Release);
        Ok(index)
    }

    /// Frames `payload` into the calling thread's lane buffer (creating the lane on first
    /// use). Never does I/O. `Err(Unavailable)` while the lane is failed, `Err(Overloaded)`
    /// when the lane's not-yet-durable bytes would pass `max_lane_buffer_bytes`,
    /// `Err(Invalid)` for an empty or too big payload.
    pub fn append(&self, payload: &[u8]) -> Result<Pos, StateError> {
        if payload.is_empty() {
            return Err(StateError::Invalid("wal: empty payload".into()));
        }
        if payload.len() > self.max_frame {
            return Err(StateError::Invalid(format!(
                "wal: payload of {} bytes is above the {} byte limit",
                payload.len(),
                self.max_frame
            )));
        }
        self.current_lane()?.append(payload, self.shared.max_buffer)
    }

    /// True once `pos` is durable (per `sync`).
    pub fn is_durable(&self, pos: Pos) -> bool {
        pos.end == 0
            || self
                .lane(pos.lane)
                .is_some_and(|l| l.durable_end() >= pos.end)
    }

    /// Resolves `Ok` once `pos` is durable, `Err(Unavailable)` if its lane failed before that.
    pub fn durable(self: &Arc<Self>, pos: Pos) -> DurableFuture {
        if pos.end == 0 {
            return DurableFuture::done(Ok(()));
        }
        let Some(lane) = self.lane(pos.lane) else {
            return DurableFuture::done(Err(StateError::Invalid(format!(
                "wal: no lane {}",
                pos.lane
            ))));
        };
        if lane.durable_end() >= pos.end {
            return DurableFuture::done(Ok(()));
        }
        DurableFuture {
            lane: Some(lane.clone()),
            end: pos.end,
            ready: None,
            yielded: false,
            waiter: None,
        }
    }

    /// Writes every lane's buffered bytes into its current segment (fdatasync'ed when `sync`),
    /// closes the current segments, and makes later appends go to new segments. Returns every
    /// sealed segment not yet removed, oldest generation first: after it returns, every frame
    /// appended before the call is in a returned file. A failed lane is retried at once; if it
    /// cannot be written, `Err(Unavailable)` (the other lanes are still rotated).
    pub fn rotate(&self) -> Result<Vec<PathBuf>, StateError> {
        let _r = lock(&self.rotate_lock);
        let mut first_err = None;
        for lane in self.lanes() {
            let mut io = lock(&lane.io);
            match lane.flush(&mut io, self.shared.sync, true) {
                Ok(end) => {
                    lane.rotated_at.store(end, Ordering::Release);
                    if let Some(seg) = io.seg.take() {
                        self.shared.seal(seg.generation, seg.path);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
            drop(io);
            lane.wake_durable();
        }
        if let Some(e) = first_err {
            return Err(unavailable(e));
        }
        let mut sealed = lock(&self.shared.sealed).clone();
        sealed.sort_by_key(|s| s.0);
        Ok(sealed.into_iter().map(|s| s.1).collect())
    }

    /// Deletes sealed segments (after the checkpointer persisted their content elsewhere) and
    /// fsyncs the directory. A path that is not a sealed segment is refused
    /// (`Err(Invalid)`, nothing deleted); an already missing file is fine.
    pub fn remove_sealed(&self, paths: &[PathBuf]) -> Result<(), StateError> {
        {
            let sealed = lock(&self.shared.sealed);
            if let Some(p) = paths.iter().find(|p| !sealed.iter().any(|s| &s.1 == *p)) {
                return Err(StateError::Invalid(format!(
                    "wal: {} is not a sealed segment",
                    p.display()
                )));
            }
        }
        for p in paths {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("cannot remove", p, e)),
            }
            lock(&self.shared.sealed).retain(|s| &s.1 != p);
        }
        sync_dir(&self.shared.dir).map_err(|e| io_error("cannot fsync", &self.shared.dir, e))
    }

    /// Writes buffered bytes of every lane that no future is driving (a lane whose written
    /// offset did not move since the previous call), so bytes of dropped futures still reach
    /// the OS; retries recovery of failed lanes when due. With `sync` it asks the sync threads
    /// instead. Call every few ms from a background thread. `Err` reports a write or recovery
    /// attempt of this call that failed.
    pub fn flush_buffers(&self) -> Result<(), StateError> {
        let mut first_err = None;
        for lane in self.lanes() {
            if self.shared.sync {
                if lane.appended.load(Ordering::Acquire) > lane.synced.load(Ordering::Acquire) {
                    let mut w = lock(&lane.waiters);
                    w.flush = true;
                    if w.sleeping {
                        w.sleeping = false;
                        lane.cv.notify_one();
                    }
                }
                continue;
            }
            let failed = lane.failed.load(Ordering::Acquire);
            let written = lane.written.load(Ordering::Acquire);
            let stale = lane.appended.load(Ordering::Acquire) > written
                && lane.flush_mark.swap(written, Ordering::AcqRel) == written;
            if !failed && !stale {
                continue;
            }
            // Never wait behind a writer: whoever holds the lock is writing these bytes.
            let mut io = match lane.io.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if failed && !lane.recovery_due(&io) {
                continue;
            }
            if let Err(e) = lane.flush(&mut io, false, false) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(unavailable(e)),
            None => Ok(()),
        }
    }

    /// Writes and fdatasyncs everything appended before the call, whatever `sync` is
    /// (graceful shutdown, `flush()`). Failed lanes are retried at once.
    pub fn sync_all(&self) -> Result<(), StateError> {
        let mut first_err = None;
        for lane in self.lanes() {
            let r = lane.flush(&mut lock(&lane.io), true, true);
            lane.wake_durable();
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(unavailable(e)),
            None => Ok(()),
        }
    }

    /// Bytes appended since the last rotate (all lanes): the checkpoint trigger.
    pub fn unrotated_bytes(&self) -> u64 {
        self.lanes()
            .map(|l| {
                l.appended
                    .load(Ordering::Acquire)
                    .saturating_sub(l.rotated_at.load(Ordering::Acquire))
            })
            .sum()
    }

    /// False while some lane is failed.
    pub fn is_healthy(&self) -> bool {
        self.lanes().all(|l| !l.failed.load(Ordering::Acquire))
    }

    /// Test hook: the next `n` segment writes or fdatasyncs fail with an I/O error.
    pub fn fail_next_writes_for_test(&self, n: u64) {
        self.shared.fail_writes.store(n, Ordering::Release);
    }

    /// Test hook: the next `n` fdatasyncs fail (writes still succeed).
    pub fn fail_next_syncs_for_test(&self, n: u64) {
        self.shared.fail_syncs.store(n, Ordering::Release);
    }

    /// Segment frame writes so far (each writes a whole batch of frames).
    pub fn writes_for_test(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// Segment fdatasyncs so far.
    pub fn syncs_for_test(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for Wal {
    /// Stops (joins) the sync threads, then writes out the buffers best effort (fdatasync'ed
    /// when `sync`); futures still pending resolve (durable, or `Unavailable`).
    fn drop(&mut self) {
        for lane in self.lanes() {
            lock(&lane.waiters).stop = true;
            lane.cv.notify_all();
        }
        for lane in self.lanes() {
            let handle = lock(&lane.thread).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        for lane in self.lanes() {
            {
                let mut io = lock(&lane.io);
                let _ = lane.write_out(&mut io, self.shared.sync);
                io.seg = None;
                // Under the io lock: an off-mode future's write sees it and writes nothing more.
                lane.closed.store(true, Ordering::Release);
            }
            lane.wake_all();
        }
    }
}

/// `(generation, lane, path)` of the segment files in `dir`, oldest generation first; a
/// missing directory has none.
fn scan_segments(dir: &Path) -> Result<Vec<(u64, u32, PathBuf)>, StateError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some((g, l)) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push((g, l, entry.path()));
        }
    }
    out.sort_by_key(|s| (s.0, s.1));
    Ok(out)
}

/// Existing segment files in `dir`, oldest generation first (lane order within a generation
/// does not matter).
pub fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, StateError> {
    Ok(scan_segments(dir)?.into_iter().map(|s| s.2).collect())
}

/// Reads into `buf` until it is full or the file ends; answers the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, StateError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("cannot read", path, e)),
        }
    }
    Ok(done)
}

/// Reads one segment, calling `f` with each intact payload in order. Stops at the first torn
/// or corrupt frame (short read, length 0 or above 16 MiB, CRC mismatch) and reports it in
/// `cut_bytes`; a file without the magic reads as 0 frames. `Err` only for I/O errors.
pub fn read_segment(path: &Path, mut f: impl FnMut(&[u8])) -> Result<ReadReport, StateError> {
    let file = File::open(path).map_err(|e| io_error("cannot open", path, e))?;
    let total = file
        .metadata()
        .map_err(|e| io_error("cannot stat", path, e))?
        .len();
    let mut r = io::BufReader::with_capacity(256 << 10, file);
    let mut report = ReadReport::default();
    let mut magic = [0u8; 8];
    if read_full(&mut r, &mut magic, path)? < magic.len() || &magic != MAGIC {
        report.cut_bytes = total;
        return Ok(report);
    }
    report.bytes = MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; HEADER];
        if read_full(&mut r, &mut h, path)? < HEADER {
            break;
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let left = total.saturating_sub(report.bytes + HEADER as u64);
        // A length past the file's end is torn or garbage: do not allocate for it.
        if len == 0 || len > MAX_FRAME_LIMIT || len as u64 > left {
            break;
        }
        payload.resize(len, 0);
        if read_full(&mut r, &mut payload, path)? < len || crc32fast::hash(&payload) != crc {
            break;
        }
        f(&payload);
        report.frames += 1;
        report.bytes += (HEADER + len) as u64;
    }
    report.cut_bytes = total.saturating_sub(report.bytes);
    Ok(report)
}
