//! Per-thread ("lane") append-only write-ahead log of the journal state backend.
//!
//! The store mutates records in memory on the calling thread (a monoio shard or a tokio
//! side-runtime thread) and appends one event frame per change to that thread's **lane**; the
//! op's future then waits until the frame is durable ([`Wal::durable`]). Lanes exist so shard
//! threads never contend with each other and, in the common case, never hop to another thread:
//!
//! * `sync == false` (durable = written to the OS): the future yields once (so the other ready
//!   tasks of the same event-loop turn append their frames too), then writes the lane's whole
//!   buffer itself: one `write(2)` per lane per turn, no thread hop. On tokio a self-wake is
//!   that yield; monoio re-polls a self-woken task at once, so monoio threads must install
//!   [`monoio_turn_deferrer`] with [`set_thread_turn_deferrer`] (else: one write per op).
//! * `sync == true` (durable = fdatasync'ed): each lane has a sync thread (`state-wal-<lane>`)
//!   that writes and fdatasyncs whatever accumulated and wakes the futures it made durable.
//!   While one fdatasync runs, new frames accumulate: group commit happens by itself.
//!
//! # Files
//!
//! Segment `<generation:016x>-<lane:04x>.wal`, starting with the magic `SMSGWAL2` and the
//! generation (u64 LE), then frames `len: u32 LE, crc: u32 LE, payload`, where `crc` is the
//! payload's CRC32 XOR a mask of the generation (`SMSGWAL1` segments of older builds, with the
//! plain CRC32 and no generation, are still read). Every segment file gets a generation of its
//! own from one counter (above every generation found at open, free files' included), so per
//! lane the generations order the frames, and a segment opened after a [`Wal::rotate`] sorts
//! after every segment that rotate sealed. Positions ([`Pos`]) are offsets in a lane's frame
//! stream (header bytes not counted), valid for this `Wal` instance only.
//!
//! With [`WalConfig::recycle_segments`], a segment is closed at `segment_bytes` and
//! [`Wal::remove_sealed`] keeps removed segments (padded to full length) as
//! `free-<generation of its last use:016x>.wal` for reuse: a new segment renames one and
//! overwrites it from the start, so the file's size and extents never change and its
//! fdatasyncs need no filesystem journal commit. Whatever the file held before is left behind
//! its new frames, all of generations below the new one (the counter starts above the free
//! files' names too); the generation mask makes those old frames fail their CRC, so a read
//! stops at the end of the new ones.
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
//!
//! A write or fdatasync that does not *return* (a hung disk) is caught by the watchdog
//! ([`WalConfig::io_timeout`]): a `state-wal-watchdog` thread fails the lane once one I/O call
//! has run longer than that, exactly as an error would (waiters and appends answer
//! `Unavailable`); when the call finally returns, the lane recovers as after an error. The
//! thread that made the call stays blocked in the kernel: in sync mode that is the lane's sync
//! thread, in off mode the appending thread itself (whose other tasks wait with it).

use std::cell::{Cell, RefCell};
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

/// First 8 bytes of a segment written by an older build: frame CRCs cover the payload only.
/// Still read (an upgrade replays what the old build left).
const MAGIC_V1: &[u8; 8] = b"SMSGWAL1";
/// First 8 bytes of a segment, followed by its generation (u64 LE). Each frame's CRC field is
/// the payload's CRC32 XOR [`gen_mask`] of that generation, so frames an earlier use left in a
/// recycled file fail their check and end the read.
const MAGIC: &[u8; 8] = b"SMSGWAL2";
/// Segment header: `MAGIC` and the generation.
const SEG_HEADER: usize = 16;
/// Name prefix of a recycled segment file waiting for reuse (not a segment: never read).
const FREE_PREFIX: &str = "free-";
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

/// Per-generation mask of frame CRCs: distinct for distinct generations below 2^32 apart
/// (multiplying by an odd constant is a bijection of u32).
fn gen_mask(generation: u64) -> u32 {
    (generation as u32).wrapping_mul(0x9E37_79B1) ^ (generation >> 32) as u32
}

/// The little-endian u32 at `at` (the caller checked `at + 4 <= b.len()`).
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// XORs the CRC field of every whole frame in `frames` (which starts at a frame boundary).
fn xor_frame_crcs(frames: &mut [u8], mask: u32) {
    if mask == 0 {
        return;
    }
    let mut off = 0;
    while off + HEADER <= frames.len() {
        let len = u32_at(frames, off) as usize;
        let crc = u32_at(frames, off + 4) ^ mask;
        frames[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
        off += HEADER + len;
    }
}

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
    /// Sync mode: most time from one fdatasync of a lane to the next (default 0). Every
    /// fdatasync costs the kernel a device flush (on a VM, an exit to the host) whatever it
    /// covers, so lingering makes each one cover more ops, at that much added latency. The
    /// sync thread waits the full linger only under load: after a sync that completed
    /// [`LINGER_FULL_WAITERS`] waiting ops or more, proportionally less after fewer (see
    /// `linger_after`).
    pub sync_linger: std::time::Duration,
    /// Watchdog: a lane whose write or fdatasync has not returned after this long fails (its
    /// waiters and new appends answer `Unavailable`) until the call returns. `None` (default):
    /// no watchdog.
    pub io_timeout: Option<Duration>,
    /// With `recycle_segments > 0`: a segment is closed once it holds this many bytes (a
    /// larger burst still goes into one segment). Default 16 MiB.
    pub segment_bytes: u64,
    /// Most removed segments kept (renamed `free-*.wal`) for reuse instead of deleted; 0
    /// (default) = delete them. A reused file has its full length and its blocks allocated,
    /// so writing into it does not change the file's size or extents and its fdatasync
    /// flushes data only, without an ext4 journal commit: measured on the 2-core VM, ~55
    /// against ~90 µs of CPU and ~130 against ~210 µs of wall time per fdatasync of 16 KiB.
    /// Costs up to this many × `segment_bytes` of disk.
    pub recycle_segments: usize,
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
            sync_linger: std::time::Duration::ZERO,
            io_timeout: None,
            segment_bytes: 16 << 20,
            recycle_segments: 0,
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
    sync_linger: std::time::Duration,
    max_buffer: u64,
    /// Generation of the next segment file (one per file).
    next_gen: AtomicU64,
    /// Closed segments not yet removed: (generation, path).
    sealed: Mutex<Vec<(u64, PathBuf)>>,
    /// Test hook: this many next segment writes / fdatasyncs fail.
    fail_writes: AtomicU64,
    /// Test hook: this many next fdatasyncs fail (writes succeed).
    fail_syncs: AtomicU64,
    /// Test hook: the next segment write or fdatasync sleeps this long first (a hung disk).
    stall_next_io: Mutex<Option<Duration>>,
    /// Segment frame writes (`write_all` calls) and fdatasyncs so far (tests, benches,
    /// metrics).
    writes: AtomicU64,
    syncs: AtomicU64,
    /// Sync mode: waiting ops the sync threads completed (per fdatasync: `/ syncs`).
    sync_waiters: AtomicU64,
    /// Origin of `Lane::io_since`.
    epoch: Instant,
    /// See `WalConfig::segment_bytes` / `recycle_segments`.
    segment_bytes: u64,
    recycle_max: usize,
    /// Recycled files ready for reuse.
    free: Mutex<Vec<PathBuf>>,
}

impl Shared {
    fn seal(&self, generation: u64, path: PathBuf) {
        lock(&self.sealed).push((generation, path));
    }

    fn injected_stall(&self) {
        let stall = lock(&self.stall_next_io).take();
        if let Some(d) = stall {
            std::thread::sleep(d);
        }
    }

    /// Microseconds since `epoch`, plus one (0 means "no I/O running" in `Lane::io_since`).
    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
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
        // A recycled file is renamed to the new name and overwritten from its start.
        let recycled = lock(&self.free).pop().and_then(|free| {
            let f = fs::rename(&free, &path)
                .and_then(|()| OpenOptions::new().write(true).open(&path))
                .and_then(|f| f.metadata().map(|m| (f, m.len())));
            match f {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(file = %free.display(), error = %e, "wal: cannot reuse a recycled segment");
                    let _ = fs::remove_file(&free);
                    let _ = fs::remove_file(&path);
                    None
                }
            }
        });
        let (mut file, cap) = match recycled {
            Some((f, len)) => (f, len.max(self.segment_bytes)),
            None => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                let cap = if self.recycle_max > 0 {
                    self.segment_bytes
                } else {
                    u64::MAX
                };
                (f, cap)
            }
        };
        let mut header = [0u8; SEG_HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        // With `sync` the directory is fsynced too: the new (or renamed) entry must survive
        // power loss before any frame in it is acknowledged.
        let init = file.write_all(&header).and_then(|()| {
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
        let len = SEG_HEADER as u64;
        Ok(Segment {
            file,
            path,
            generation,
            len,
            good_len: len,
            synced_len: 0,
            cap,
        })
    }

    /// A removed segment: kept for reuse while the pool has room and the file is (or is
    /// cheaply made) full-length, else deleted. Padding a shorter file with zeros happens here,
    /// on the caller's (checkpoint) thread, never on a writing one.
    fn retire(&self, path: &Path) -> io::Result<()> {
        let recycle = self.recycle_max > 0 && lock(&self.free).len() < self.recycle_max;
        let len = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // A short segment (light traffic, an early rotate) is not worth writing zeros for.
        if !recycle || len < self.segment_bytes / 2 {
            return match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if len < self.segment_bytes {
            let mut f = OpenOptions::new().append(true).open(path)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = self.segment_bytes - len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            // The blocks must be allocated and written on disk, or a later write into them
            // changes extents again (and its fdatasync commits the journal).
            f.sync_all()?;
        }
        // Named by the generation of its last use: the highest of any frame in it, which the
        // generation counter must stay above (see `scan_free`).
        let Some((generation, _)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_name)
        else {
            return fs::remove_file(path);
        };
        let free = self.dir.join(format!("{FREE_PREFIX}{generation:016x}.wal"));
        fs::rename(path, &free)?;
        lock(&self.free).push(free);
        Ok(())
    }

    /// Writes `data` at the end of `file`; answers how many bytes reached the OS before an
    /// error (so the caller knows which frames made it).
    fn write_segment(&self, file: &mut File, data: &[u8]) -> (usize, io::Result<()>) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.injected_stall();
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
        self.injected_stall();
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
    /// Frames go to the next segment once this length would be passed (`u64::MAX`: never).
    cap: u64,
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
    /// Prefix of `pending` whose CRC fields are masked, with the mask of `masked_gen`.
    masked_upto: usize,
    masked_gen: u64,
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
        self.masked_upto = 0;
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
    /// Wake hand-offs: `(waiter id, wakers)`. A thread other than the waiters' own wakes one
    /// waiter per thread and leaves it the others' wakers, which it wakes on its own thread
    /// when polled (or dropped): one cross-thread wake per thread per sync instead of one per
    /// op (each costs the shard a remote-queue push and often an eventfd round trip).
    handoff: Vec<(u64, Vec<Waker>)>,
}

struct Waiter {
    id: u64,
    end: u64,
    waker: Waker,
    /// The thread that polled it last (where its task runs).
    thread: std::thread::ThreadId,
}

// Own cache lines: a lane's atomics are written per op by its thread only.
#[repr(align(128))]
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
    /// Off mode with a turn deferral: a driver future is scheduled to write this turn.
    turn_driver: AtomicBool,
    /// While a write/fdatasync of this lane runs: when it started (`Shared::now_mark`); else
    /// 0. Read by the watchdog.
    io_since: AtomicU64,
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
                masked_upto: 0,
                masked_gen: 0,
                backoff: RETRY_MIN,
                retry_at: None,
            }),
            waiters: Mutex::new(Waiters {
                list: Vec::new(),
                next_id: 0,
                sleeping: false,
                flush: false,
                stop: false,
                handoff: Vec::new(),
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
            turn_driver: AtomicBool::new(false),
            io_since: AtomicU64::new(0),
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
                io.masked_upto = 0;
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
        // Marks the lane busy for the watchdog, whatever way this returns.
        struct Busy<'a>(&'a AtomicU64);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        self.io_since
            .store(self.shared.now_mark(), Ordering::Release);
        let _busy = Busy(&self.io_since);
        let end = self.take_buffer(io);
        debug_assert_eq!(io.pending_end(), end);
        if io.pending_written < io.pending.len() {
            // A full segment is closed before frames that would pass its cap, once nothing in
            // it waits for a write or fdatasync (pending_written == 0).
            if io.pending_written == 0
                && let Some(seg) = io.seg.as_ref()
                && seg.len > SEG_HEADER as u64
                && seg.len.saturating_add(io.pending.len() as u64) > seg.cap
                && let Some(seg) = io.seg.take()
            {
                self.shared.seal(seg.generation, seg.path);
            }
            if io.seg.is_none() {
                match self.shared.open_segment(self.index) {
                    Ok(s) => io.seg = Some(s),
                    Err(e) => return Err(self.fail(io, "cannot create a segment in", e, 0)),
                }
            }
            let Some(seg) = io.seg.as_mut() else {
                return Err(self.error_text());
            };
            // Mask the CRCs for this segment's generation; frames masked for a failed
            // segment's generation (rewritten after recovery) are re-masked.
            if io.masked_upto > 0 && io.masked_gen != seg.generation {
                xor_frame_crcs(
                    &mut io.pending[..io.masked_upto],
                    gen_mask(io.masked_gen) ^ gen_mask(seg.generation),
                );
            }
            io.masked_gen = seg.generation;
            let from = io.masked_upto;
            xor_frame_crcs(&mut io.pending[from..], gen_mask(seg.generation));
            io.masked_upto = io.pending.len();
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
                io.masked_upto = io.masked_upto.saturating_sub(boundary);
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
        self.mark_failed(&text);
        text
    }

    /// Records `text`, marks the lane failed and wakes every waiter (each reads its outcome).
    /// Touches no `Io`, so the watchdog can call it while a stuck thread holds that lock.
    fn mark_failed(&self, text: &str) {
        *lock(&self.error) = text.to_string();
        {
            // Under the buffer lock: appends after this see `failed`, appends before it are
            // covered by `failed_upto`.
            let b = lock(&self.buf);
            self.failed_upto.fetch_max(b.end, Ordering::AcqRel);
            self.failed.store(true, Ordering::Release);
        }
        tracing::warn!(lane = self.index, error = %text, "wal lane failed");
        self.wake_all();
    }

    /// Watchdog: fails the lane if the I/O call that started at `since` (a `Lane::io_since`
    /// value) is still running, as an error would, but without touching `Io` (the stuck
    /// thread holds it). When the call returns, the lane recovers like after an error: the
    /// sync thread, `flush_buffers` or `rotate` retry into a fresh segment. Answers whether it
    /// failed the lane.
    fn stall(&self, since: u64, waited: Duration) -> bool {
        if self.failed.load(Ordering::Acquire) || self.io_since.load(Ordering::Acquire) != since {
            return false;
        }
        let text = format!(
            "wal lane {}: a write or fdatasync in {} has not returned for {} ms (disk hung?)",
            self.index,
            self.shared.dir.display(),
            waited.as_millis()
        );
        self.mark_failed(&text);
        true
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

    /// Off mode, the write of a turn (by its driver, or by a self-woken future): writes the
    /// lane's buffer and wakes the futures parked behind it; answers the outcome of `end`.
    fn drive_turn(&self, end: u64) -> Result<(), StateError> {
        // Cleared before taking the buffer: a future that still finds the flag set appended
        // before this write takes the buffer, so the write covers its frame.
        self.turn_driver.swap(false, Ordering::AcqRel);
        if self.appended.load(Ordering::Acquire) > self.written.load(Ordering::Acquire) {
            let mut io = lock(&self.io);
            // An error is recorded in the lane and read back by `outcome`.
            let _ = self.write_out(&mut io, false);
        }
        self.wake_durable();
        self.outcome(end)
            .unwrap_or_else(|| Err(unavailable("wal: frame not written")))
    }

    /// Wakes the waiters whose position is durable.
    /// Returns how many waiters it completed; in sync mode also adds them to the
    /// `sync_waiters` count (each was made durable by an fdatasync).
    fn wake_durable(&self) -> usize {
        let d = self.durable_end();
        let me = std::thread::current().id();
        let mut completed = 0;
        let ready = {
            let mut w = lock(&self.waiters);
            if w.list.is_empty() {
                return 0;
            }
            // Woken outside the lock: a waker may do real work (cross-thread unpark). This
            // thread's own waiters are woken directly (cheap, local); of another thread's, one
            // is woken and carries the rest (see `Waiters::handoff`).
            let mut ready: Vec<Waker> = Vec::new();
            let mut heads: Vec<(std::thread::ThreadId, u64, Vec<Waker>)> = Vec::new();
            let mut i = 0;
            while i < w.list.len() {
                if w.list[i].end > d {
                    i += 1;
                    continue;
                }
                let x = w.list.swap_remove(i);
                completed += 1;
                if x.thread == me {
                    ready.push(x.waker);
                } else if let Some(h) = heads.iter_mut().find(|h| h.0 == x.thread) {
                    h.2.push(x.waker);
                } else {
                    ready.push(x.waker);
                    heads.push((x.thread, x.id, Vec::new()));
                }
            }
            for (_, id, rest) in heads {
                if !rest.is_empty() {
                    w.handoff.push((id, rest));
                }
            }
            ready
        };
        if self.shared.sync {
            // Counted before the wake-ups: a woken op's thread may read the count at once
            // (counting after them undercounted in `sync_mode_lingers_only_under_load`).
            self.shared
                .sync_waiters
                .fetch_add(completed as u64, Ordering::Relaxed);
        }
        for waker in ready {
            waker.wake();
        }
        completed
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
        let len = u32_at(frames, off) as usize;
        let next = off + HEADER + len;
        if next > reached {
            break;
        }
        off = next;
    }
    off
}

/// Waiting ops one sync must complete for the next to wait the whole `sync_linger`.
pub const LINGER_FULL_WAITERS: usize = 64;

/// The wait from one sync's start to the next: `linger` scaled by how many waiting ops the
/// last sync completed, full from [`LINGER_FULL_WAITERS`] on. Few ops per sync means light
/// load: syncing at once then costs little CPU and saves their latency (measured on the 2-core
/// VM: p50 at 1,000 msg/s 0.75 ms against 1.3 ms with a fixed 0.5 ms linger, 3.6 ms with a
/// fixed 2 ms). Many means load: each fdatasync costs CPU whatever it covers, and a longer
/// wait makes each cover more (up to 2 ms halved the sync thread's CPU at max; the max itself
/// moved within the noise). Under a steady load the wait settles at the full linger or near
/// none, by whether `rate x linger` reaches the threshold (about 21k msg/s of three ops each
/// with the default 1 ms). perf/RESULTS.md, session 7.
fn linger_after(linger: std::time::Duration, completed: usize) -> std::time::Duration {
    if completed >= LINGER_FULL_WAITERS {
        linger
    } else {
        linger * completed as u32 / LINGER_FULL_WAITERS as u32
    }
}

/// Body of a sync-mode lane's thread: write + fdatasync what accumulated while there are
/// waiters (or a flush request), wake the futures made durable; retry recovery while failed.
fn sync_loop(lane: Arc<Lane>, linger: std::time::Duration) {
    let mut last_sync: Option<std::time::Instant> = None;
    // Full linger until the first sync says what the load is.
    let mut wait = linger;
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
        if let Some(at) = last_sync {
            let since = at.elapsed();
            if since < wait {
                // More frames of the same group arrive meanwhile; `stop` is seen on the next
                // loop (at most `linger` late).
                std::thread::sleep(wait - since);
            }
        }
        last_sync = Some(std::time::Instant::now());
        {
            let mut io = lock(&lane.io);
            // Errors are recorded in the lane (failed flag, error text, woken futures).
            let _ = lane.flush(&mut io, true, false);
        }
        let completed = lane.wake_durable();
        wait = linger_after(linger, completed);
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
    /// Tells the watchdog thread (if any) to end.
    watchdog_stop: Arc<(Mutex<bool>, Condvar)>,
}

/// Body of the watchdog thread: checks the lanes every quarter of `timeout` (5..=250 ms).
/// Holds the `Wal` only while checking; ends when told to or when the `Wal` is gone. Not
/// joined by `Drop` (which may even run on this thread, if its upgrade held the last `Arc`).
fn watchdog(wal: &Weak<Wal>, stop: &(Mutex<bool>, Condvar), timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    loop {
        {
            let stopped = lock(&stop.0);
            if *stopped {
                return;
            }
            let (stopped, _) = stop
                .1
                .wait_timeout(stopped, tick)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        let Some(wal) = wal.upgrade() else {
            return;
        };
        wal.check_stalls(timeout);
    }
}

thread_local! {
    /// This thread's end-of-turn deferral (see [`set_thread_turn_deferrer`]).
    static TURN_DEFER: Cell<Option<fn(Waker)>> = const { Cell::new(None) };
}

/// Installs (or with `None` removes) the calling thread's **end-of-turn deferral**: a function
/// that wakes the given waker only after the tasks already queued in the current event-loop
/// turn have run. With it, off-mode [`DurableFuture`]s on this thread batch as intended: the
/// first one of a turn on a lane defers itself through it, the others of the turn park, and
/// the deferred one writes the whole lane buffer with one `write(2)` and wakes them.
///
/// Needed on monoio threads ([`monoio_turn_deferrer`]): monoio polls a task that woke itself
/// again *at once* (ahead of the other queued tasks), so the fallback "wake myself, write on
/// the next poll" yields nothing there and costs one write per op. Tokio re-queues a
/// self-woken task behind the others, so tokio threads need no deferral. Sync mode ignores it.
pub fn set_thread_turn_deferrer(defer: Option<fn(Waker)>) {
    // Fails only during thread teardown: nothing left to batch then.
    let _ = TURN_DEFER.try_with(|d| d.set(defer));
}

/// End-of-turn deferral for a monoio runtime thread: a spawned task, queued behind every task
/// already runnable, wakes `waker`. Install with
/// `set_thread_turn_deferrer(Some(monoio_turn_deferrer))` on each monoio thread that appends.
/// Must run inside a monoio runtime (the only place a monoio task's future is polled).
pub fn monoio_turn_deferrer(waker: Waker) {
    // Dropping the handle detaches the task.
    drop(monoio::spawn(async move { waker.wake() }));
}

/// Where a [`DurableFuture`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not polled yet.
    Fresh,
    /// Off mode without a turn deferral: woke itself once; writes on the next poll.
    Yielded,
    /// Off mode with a turn deferral: this future writes the lane's buffer for the turn when
    /// the deferral wakes it.
    Driver,
    /// Registered in the lane's waiter list (sync mode; off mode: parked behind a driver).
    Waiting,
}

/// Resolves `Ok` once a position is durable, `Err(Unavailable)` if its lane failed (or the
/// `Wal` was dropped) before. Runtime-agnostic: no tokio or monoio types inside.
pub struct DurableFuture {
    lane: Option<Arc<Lane>>,
    end: u64,
    /// Outcome decided at creation.
    ready: Option<Result<(), StateError>>,
    stage: Stage,
    /// Registration id in the lane's waiter list, and the waker registered with it.
    waiter: Option<(u64, Waker)>,
}

impl DurableFuture {
    fn done(r: Result<(), StateError>) -> DurableFuture {
        DurableFuture {
            lane: None,
            end: 0,
            ready: Some(r),
            stage: Stage::Fresh,
            waiter: None,
        }
    }
}

/// Registers (or refreshes) a waiter of position `end`; answers the outcome instead if it was
/// decided meanwhile (deciders store `written`/`synced`/`failed` before taking this lock).
fn register(
    lane: &Lane,
    end: u64,
    waiter: &mut Option<(u64, Waker)>,
    cx: &Context<'_>,
) -> Option<Result<(), StateError>> {
    let mut w = lock(&lane.waiters);
    if let Some(r) = lane.outcome(end) {
        let mut handed = Vec::new();
        if let Some((id, _)) = waiter.take() {
            if let Some(i) = w.list.iter().position(|x| x.id == id) {
                w.list.swap_remove(i);
                // Made durable by a sync whose wake-up has not reached the list yet (this
                // re-poll came first): count it here, as `wake_durable` would have.
                if lane.shared.sync && r.is_ok() {
                    lane.shared.sync_waiters.fetch_add(1, Ordering::Relaxed);
                }
            }
            handed = take_handoff(&mut w, id);
        }
        drop(w);
        for k in handed {
            k.wake();
        }
        return Some(r);
    }
    let waker = cx.waker().clone();
    // A first registration is a push: a search for it would make every turn (off mode) or
    // sync (batch mode) quadratic in the waiters (measured: ~0.8 µs per message with a few
    // hundred ops in flight per shard). Only a re-poll with another waker searches.
    let existing = waiter.as_ref().and_then(|(id, _)| {
        let x = w.list.iter_mut().find(|x| x.id == *id)?;
        x.waker = waker.clone();
        Some(*id)
    });
    let id = match existing {
        Some(id) => id,
        None => {
            // A known id whose entry a wake-up took keeps it; a new waiter gets the next one.
            let id = match waiter {
                Some((id, _)) => *id,
                None => {
                    w.next_id += 1;
                    w.next_id
                }
            };
            w.list.push(Waiter {
                id,
                end,
                waker: waker.clone(),
                thread: std::thread::current().id(),
            });
            id
        }
    };
    *waiter = Some((id, waker));
    if w.sleeping {
        // Only a sleeping sync thread needs the (futex) wake; a busy one re-checks the waiter
        // list before it sleeps.
        w.sleeping = false;
        lane.cv.notify_one();
    }
    None
}

/// Takes a waiter's registration back (cancelled or re-roled future).
fn deregister(lane: &Lane, waiter: &mut Option<(u64, Waker)>) {
    if let Some((id, _)) = waiter.take() {
        let handed = {
            let mut w = lock(&lane.waiters);
            if let Some(i) = w.list.iter().position(|x| x.id == id) {
                w.list.swap_remove(i);
            }
            take_handoff(&mut w, id)
        };
        // Woken or not, this waiter's hand-off must not be lost with it.
        for k in handed {
            k.wake();
        }
    }
}

fn take_handoff(w: &mut Waiters, id: u64) -> Vec<Waker> {
    match w.handoff.iter().position(|(h, _)| *h == id) {
        Some(i) => w.handoff.swap_remove(i).1,
        None => Vec::new(),
    }
}

impl Future for DurableFuture {
    type Output = Result<(), StateError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(r) = this.ready.take() {
            return Poll::Ready(r);
        }
        let Some(lane) = this.lane.clone() else {
            return Poll::Ready(Err(unavailable("wal: future polled after completion")));
        };
        let end = this.end;
        let decided = |this: &mut DurableFuture, r| {
            // A registration left behind is removed by whoever decided the outcome.
            this.waiter = None;
            this.lane = None;
            Poll::Ready(r)
        };
        if this.stage == Stage::Driver {
            // The turn's writer: write even if this frame already made it (e.g. through
            // `flush_buffers`), since futures parked behind it wait for this write.
            return decided(this, lane.drive_turn(end));
        }
        if let Some(r) = lane.outcome(end) {
            // Woken as its thread's head: wake the waiters it carries (here, locally).
            if let Some((id, _)) = this.waiter {
                let handed = take_handoff(&mut lock(&lane.waiters), id);
                for k in handed {
                    k.wake();
                }
            }
            return decided(this, r);
        }
        if lane.shared.sync {
            // Registered with an equivalent waker already: nothing to update.
            if let Some((_, w)) = &this.waiter
                && w.will_wake(cx.waker())
            {
                return Poll::Pending;
            }
            this.stage = Stage::Waiting;
            return match register(&lane, end, &mut this.waiter, cx) {
                Some(r) => decided(this, r),
                None => Poll::Pending,
            };
        }
        match this.stage {
            Stage::Yielded | Stage::Driver => decided(this, lane.drive_turn(end)),
            Stage::Fresh | Stage::Waiting => {
                let Some(defer) = TURN_DEFER.try_with(Cell::get).ok().flatten() else {
                    // Yield once so the other ready tasks of this turn append too (tokio runs
                    // them before re-polling a self-woken task): the next poll writes all their
                    // frames with one write(2).
                    deregister(&lane, &mut this.waiter);
                    this.stage = Stage::Yielded;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                if !lane.turn_driver.swap(true, Ordering::AcqRel) {
                    deregister(&lane, &mut this.waiter);
                    this.stage = Stage::Driver;
                    defer(cx.waker().clone());
                    return Poll::Pending;
                }
                // A driver writes this turn (and covers this frame): park until it wakes us.
                this.stage = Stage::Waiting;
                match register(&lane, end, &mut this.waiter, cx) {
                    Some(r) => decided(this, r),
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl Drop for DurableFuture {
    fn drop(&mut self) {
        let Some(lane) = self.lane.take() else {
            return;
        };
        // A cancelled future takes its registration back, so waiters stay bounded by the
        // futures in flight.
        deregister(&lane, &mut self.waiter);
        if self.stage == Stage::Driver {
            // The turn's writer is gone: let the parked futures elect another one.
            lane.turn_driver.store(false, Ordering::Release);
            lane.wake_all();
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
        let (free, free_max_gen) = scan_free(&cfg.dir, cfg.recycle_segments, cfg.segment_bytes)?;
        let next_gen = match existing.iter().map(|s| s.0).chain(free_max_gen).max() {
            None => 1,
            Some(g) => g.checked_add(1).ok_or_else(|| {
                StateError::Corrupt("wal: segment generation at its maximum".into())
            })?,
        };
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            sync: cfg.sync,
            sync_linger: cfg.sync_linger,
            max_buffer: cfg.max_lane_buffer_bytes as u64,
            next_gen: AtomicU64::new(next_gen),
            sealed: Mutex::new(existing.into_iter().map(|(g, _, p)| (g, p)).collect()),
            fail_writes: AtomicU64::new(0),
            fail_syncs: AtomicU64::new(0),
            stall_next_io: Mutex::new(None),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_waiters: AtomicU64::new(0),
            epoch: Instant::now(),
            segment_bytes: cfg.segment_bytes.max(SEG_HEADER as u64 + 1),
            recycle_max: cfg.recycle_segments,
            free: Mutex::new(free),
        });
        let watchdog_stop = Arc::new((Mutex::new(false), Condvar::new()));
        let wal = Arc::new(Wal {
            id: NEXT_WAL_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
            shared,
            max_frame: cfg.max_frame_bytes,
            lanes: (0..cfg.max_lanes).map(|_| OnceLock::new()).collect(),
            created: AtomicUsize::new(0),
            create_lock: Mutex::new(()),
            rotate_lock: Mutex::new(()),
            watchdog_stop: Arc::clone(&watchdog_stop),
        });
        if let Some(timeout) = cfg.io_timeout {
            let weak = Arc::downgrade(&wal);
            std::thread::Builder::new()
                .name("state-wal-watchdog".into())
                .spawn(move || watchdog(&weak, &watchdog_stop, timeout))
                .map_err(|e| unavailable(format!("cannot spawn the watchdog: {e}")))?;
        }
        Ok(wal)
    }

    /// Fails every lane whose current write/fdatasync started more than `timeout` ago.
    /// Answers how many it failed.
    fn check_stalls(&self, timeout: Duration) -> usize {
        let now = self.shared.now_mark();
        let limit = timeout.as_micros() as u64;
        self.lanes()
            .filter(|lane| {
                let since = lane.io_since.load(Ordering::Acquire);
                since != 0
                    && now.saturating_sub(since) > limit
                    && lane.stall(since, Duration::from_micros(now - since))
            })
            .count()
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
                .spawn(move || {
                    let linger = l.shared.sync_linger;
                    sync_loop(l, linger)
                })
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
            stage: Stage::Fresh,
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
            self.shared
                .retire(p)
                .map_err(|e| io_error("cannot remove", p, e))?;
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
            let r = lane.flush(&mut io, false, false);
            drop(io);
            // Futures parked behind a turn driver that never ran (dropped) are woken here.
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

    /// fdatasyncs of log segments so far, and (sync mode) the waiting ops the sync threads
    /// completed with them: what `sync_linger` buys (metrics).
    pub fn sync_counts(&self) -> (u64, u64) {
        (
            self.shared.syncs.load(Ordering::Relaxed),
            self.shared.sync_waiters.load(Ordering::Relaxed),
        )
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

    /// Test hook: the next segment write or fdatasync (whichever comes first) sleeps `d`
    /// before it runs, as on a hung disk.
    pub fn stall_next_io_for_test(&self, d: Duration) {
        *lock(&self.shared.stall_next_io) = Some(d);
    }

    /// Test hook: the next `n` fdatasyncs fail (writes still succeed).
    pub fn fail_next_syncs_for_test(&self, n: u64) {
        self.shared.fail_syncs.store(n, Ordering::Release);
    }

    /// Segment frame writes so far (each writes a whole batch of frames).
    pub fn writes_for_test(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }
}

impl Drop for Wal {
    /// Stops (joins) the sync threads, then writes out the buffers best effort (fdatasync'ed
    /// when `sync`); futures still pending resolve (durable, or `Unavailable`).
    fn drop(&mut self) {
        *lock(&self.watchdog_stop.0) = true;
        self.watchdog_stop.1.notify_all();
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

/// Recycled files in `dir` to keep (at most `keep`, full-length; the others are deleted: a pool
/// that shrank, a file cut short by a crash while padding) and the highest generation named by
/// any of them. Every frame in a free file is of that generation or below, so a counter
/// starting above it never gives a new segment the generation of a frame it may still hold.
fn scan_free(
    dir: &Path,
    keep: usize,
    segment_bytes: u64,
) -> Result<(Vec<PathBuf>, Option<u64>), StateError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(io_error("cannot list", dir, e)),
    };
    let mut free = Vec::new();
    let mut max_gen = None;
    for entry in rd {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FREE_PREFIX)?.strip_suffix(".wal"))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        max_gen = max_gen.max(Some(generation));
        let full = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() >= segment_bytes);
        if full && free.len() < keep {
            free.push(entry.path());
        } else {
            fs::remove_file(entry.path())
                .map_err(|e| io_error("cannot remove", &entry.path(), e))?;
        }
    }
    Ok((free, max_gen))
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
/// `cut_bytes`; so does the unused rest of a recycled file (zeros, or frames of its earlier
/// use, whose CRCs are masked for another generation). A file without a magic, or whose
/// header names another generation than its file name, reads as 0 frames. Both formats
/// (`SMSGWAL1`, `SMSGWAL2`) are read. `Err` only for I/O errors.
pub fn read_segment(path: &Path, mut f: impl FnMut(&[u8])) -> Result<ReadReport, StateError> {
    let file = File::open(path).map_err(|e| io_error("cannot open", path, e))?;
    let total = file
        .metadata()
        .map_err(|e| io_error("cannot stat", path, e))?
        .len();
    let mut r = io::BufReader::with_capacity(256 << 10, file);
    let mut report = ReadReport::default();
    let mut magic = [0u8; 8];
    if read_full(&mut r, &mut magic, path)? < magic.len() {
        report.cut_bytes = total;
        return Ok(report);
    }
    let mask = if &magic == MAGIC_V1 {
        report.bytes = MAGIC_V1.len() as u64;
        0
    } else if &magic == MAGIC {
        let mut g = [0u8; 8];
        if read_full(&mut r, &mut g, path)? < g.len() {
            report.cut_bytes = total;
            return Ok(report);
        }
        let generation = u64::from_le_bytes(g);
        // A header whose generation is not the file name's belongs to an earlier use of a
        // recycled file (a crash came between the rename and the new header): nothing here.
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_name);
        if named.is_some_and(|(g, _)| g != generation) {
            report.cut_bytes = total;
            return Ok(report);
        }
        report.bytes = SEG_HEADER as u64;
        gen_mask(generation)
    } else {
        report.cut_bytes = total;
        return Ok(report);
    };
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
        if read_full(&mut r, &mut payload, path)? < len || crc32fast::hash(&payload) ^ mask != crc {
            break;
        }
        f(&payload);
        report.frames += 1;
        report.bytes += (HEADER + len) as u64;
    }
    report.cut_bytes = total.saturating_sub(report.bytes);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::task::Wake;

    use crate::state::suite::monoio_block_on;

    /// `tasks` monoio tasks on one runtime, each appending `per_task` frames
    /// (`<prefix><task>-<i>`) and awaiting each one's durability.
    fn monoio_appenders(wal: &Arc<Wal>, tasks: usize, per_task: usize, prefix: &str) {
        monoio_block_on(async {
            let handles: Vec<_> = (0..tasks)
                .map(|t| {
                    let wal = wal.clone();
                    let prefix = prefix.to_string();
                    monoio::spawn(async move {
                        for i in 0..per_task {
                            let pos = wal.append(format!("{prefix}{t}-{i}").as_bytes())?;
                            wal.durable(pos).await?;
                        }
                        Ok::<(), StateError>(())
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("monoio task");
            }
        });
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    fn open(dir: &Path, sync: bool) -> Arc<Wal> {
        Wal::open(WalConfig::new(dir.to_path_buf(), sync)).expect("open wal")
    }

    fn payload(i: usize) -> Vec<u8> {
        format!("frame-{i}-").repeat(1 + i % 7).into_bytes()
    }

    fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in paths {
            read_segment(p, |x| out.push(x.to_vec())).expect("read segment");
        }
        out
    }

    fn generation_of(p: &Path) -> u64 {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        parse_segment_name(name).expect("segment name").0
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn is_unavailable<T: std::fmt::Debug>(r: &Result<T, StateError>) -> bool {
        matches!(r, Err(StateError::Unavailable(_)))
    }

    #[test]
    fn types_are_shareable_across_runtimes() {
        fn shared<T: Send + Sync + 'static>() {}
        fn future<T: Future + Send + Unpin + 'static>() {}
        shared::<Wal>();
        future::<DurableFuture>();
    }

    #[test]
    fn append_durable_rotate_reads_back_in_order_both_modes() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = open(&dir.path().join("wal"), sync);
            let expect: Vec<Vec<u8>> = (0..200).map(payload).collect();
            block_on(async {
                for p in &expect[..150] {
                    let pos = wal.append(p).expect("append");
                    wal.durable(pos).await.expect("durable");
                    assert!(wal.is_durable(pos));
                }
            });
            // Appended but never awaited: rotate must still put them in a returned file.
            let mut last = Pos::default();
            for p in &expect[150..] {
                last = wal.append(p).expect("append");
            }
            let total: u64 = expect.iter().map(|p| (HEADER + p.len()) as u64).sum();
            assert_eq!(last.end, total);
            assert_eq!(wal.unrotated_bytes(), total);
            let segs = wal.rotate().expect("rotate");
            assert_eq!(segs.len(), 1, "sync={sync}");
            assert!(wal.is_durable(last));
            assert_eq!(read_all(&segs), expect, "sync={sync}");
            let r = read_segment(&segs[0], |_| {}).expect("read");
            assert_eq!(r.frames, 200);
            assert_eq!(r.cut_bytes, 0);
            assert_eq!(r.bytes, total + SEG_HEADER as u64);
            assert_eq!(wal.unrotated_bytes(), 0);
        }
    }

    #[test]
    fn four_threads_get_a_lane_each_and_lose_or_repeat_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let mut lanes = HashSet::new();
                    for i in 0..500 {
                        let pos = wal.append(format!("t{t}-{i}").as_bytes()).expect("append");
                        lanes.insert(pos.lane);
                        if i % 10 == 9 {
                            block_on(wal.durable(pos)).expect("durable");
                        }
                    }
                    lanes
                })
            })
            .collect();
        let mut all_lanes = HashSet::new();
        for h in threads {
            let lanes = h.join().expect("thread");
            assert_eq!(lanes.len(), 1, "one lane per thread");
            all_lanes.extend(lanes);
        }
        assert_eq!(all_lanes.len(), 4, "distinct lanes");
        let segs = wal.rotate().expect("rotate");
        assert_eq!(segs.len(), 4);
        let got = read_all(&segs);
        assert_eq!(got.len(), 2000);
        let unique: HashSet<&Vec<u8>> = got.iter().collect();
        assert_eq!(unique.len(), 2000, "no frame twice");
        // Per thread, frames come in append order (one lane, one segment each).
        let mut next = [0usize; 4];
        for p in &got {
            let s = std::str::from_utf8(p).expect("utf8");
            let (t, i) = s[1..].split_once('-').expect("t-i");
            let (t, i): (usize, usize) = (t.parse().expect("t"), i.parse().expect("i"));
            assert_eq!(next[t], i);
            next[t] += 1;
        }
    }

    #[test]
    fn threads_beyond_max_lanes_share_lanes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = WalConfig::new(dir.path().to_path_buf(), true);
        cfg.max_lanes = 2;
        let wal = Wal::open(cfg).expect("open");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let mut lanes = HashSet::new();
                    for i in 0..100 {
                        let pos = wal.append(format!("{t}-{i}").as_bytes()).expect("append");
                        lanes.insert(pos.lane);
                        block_on(wal.durable(pos)).expect("durable");
                    }
                    lanes
                })
            })
            .collect();
        for h in threads {
            assert!(h.join().expect("thread").iter().all(|l| *l < 2));
        }
        let got = read_all(&wal.rotate().expect("rotate"));
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 400);
    }

    #[test]
    fn off_mode_futures_of_one_turn_share_one_write() {
        const N: usize = 64;
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        let before = wal.writes_for_test();
        monoio_block_on(async {
            set_thread_turn_deferrer(Some(monoio_turn_deferrer));
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let wal = wal.clone();
                    monoio::spawn(async move {
                        let pos = wal.append(&payload(i))?;
                        wal.durable(pos).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("durable");
            }
        });
        let writes = wal.writes_for_test() - before;
        assert!(
            (1..=(N / 4) as u64).contains(&writes),
            "{writes} writes for {N} futures"
        );
        assert_eq!(read_all(&wal.rotate().expect("rotate")).len(), N);
    }

    #[test]
    fn off_mode_batches_on_tokio_without_a_deferral_and_stays_correct_on_monoio_without_one() {
        const N: usize = 64;
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        let before = wal.writes_for_test();
        rt.block_on(async {
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        let pos = wal.append(&payload(i))?;
                        wal.durable(pos).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("join").expect("durable");
            }
        });
        let writes = wal.writes_for_test() - before;
        assert!(writes <= (N / 4) as u64, "tokio: {writes} writes for {N}");
        // monoio re-polls a self-woken task at once: no batching, but every future resolves.
        monoio_block_on(async {
            set_thread_turn_deferrer(None);
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let wal = wal.clone();
                    monoio::spawn(async move {
                        let pos = wal.append(&payload(i))?;
                        wal.durable(pos).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("durable");
            }
        });
        assert_eq!(read_all(&wal.rotate().expect("rotate")).len(), 2 * N);
    }

    thread_local! {
        static DEFERRED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    }

    fn test_defer(w: Waker) {
        DEFERRED.with_borrow_mut(|d| d.push(w));
    }

    struct FlagWake(AtomicBool);
    impl Wake for FlagWake {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A sync-mode waiter re-polled with another waker after its frame became durable, but
    /// before the sync's wake-up reached the waiter list, takes its own entry out: it must
    /// still count as completed by that sync, exactly once.
    #[test]
    fn a_waiter_that_finds_its_sync_first_is_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        // A lane the Wal does not know: no sync thread races this test's steps.
        let lane = Arc::new(Lane::new(7, Arc::clone(&wal.shared)));
        let pos = lane.append(b"frame", u64::MAX).expect("append");
        let mut fut = DurableFuture {
            lane: Some(Arc::clone(&lane)),
            end: pos.end,
            ready: None,
            stage: Stage::Fresh,
            waiter: None,
        };
        let (a, b) = (
            Waker::from(Arc::new(FlagWake(AtomicBool::new(false)))),
            Waker::from(Arc::new(FlagWake(AtomicBool::new(false)))),
        );
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&a))
                .is_pending()
        );
        assert_eq!(lock(&lane.waiters).list.len(), 1, "registered");
        // The sync, as the sync thread does it, without its wake-up, lands after a re-poll
        // (with another waker) found the frame not yet durable and before it registers again:
        // the registration step of that poll.
        lane.write_out(&mut lock(&lane.io), true)
            .expect("write and sync");
        let r = register(&lane, pos.end, &mut fut.waiter, &Context::from_waker(&b));
        assert!(matches!(r, Some(Ok(()))), "{r:?}");
        assert!(
            lock(&lane.waiters).list.is_empty(),
            "its entry is taken out"
        );
        assert_eq!(wal.shared.sync_waiters.load(Ordering::Relaxed), 1);
        // The late wake-up finds nothing left to count.
        assert_eq!(lane.wake_durable(), 0);
        assert_eq!(wal.shared.sync_waiters.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn off_mode_parked_futures_survive_a_dropped_turn_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        set_thread_turn_deferrer(Some(test_defer));
        let a = wal.append(b"A").expect("append");
        let b = wal.append(b"B").expect("append");
        let (mut fa, mut fb) = (wal.durable(a), wal.durable(b));
        let flag_a = Arc::new(FlagWake(AtomicBool::new(false)));
        let flag_b = Arc::new(FlagWake(AtomicBool::new(false)));
        let (wa, wb) = (Waker::from(flag_a.clone()), Waker::from(flag_b.clone()));
        // A drives the turn (deferred), B parks behind it.
        assert!(
            Pin::new(&mut fa)
                .poll(&mut Context::from_waker(&wa))
                .is_pending()
        );
        assert_eq!(DEFERRED.with_borrow(Vec::len), 1);
        assert!(
            Pin::new(&mut fb)
                .poll(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert_eq!(
            DEFERRED.with_borrow(Vec::len),
            1,
            "B parked, no second deferral"
        );
        assert_eq!(wal.writes_for_test(), 0);
        // The driver is cancelled before its turn ends: B is woken and takes over.
        drop(fa);
        assert!(flag_b.0.load(Ordering::SeqCst));
        assert!(
            Pin::new(&mut fb)
                .poll(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert_eq!(DEFERRED.with_borrow(Vec::len), 2);
        // Its deferral fires: one write covers both frames.
        assert_eq!(
            Pin::new(&mut fb).poll(&mut Context::from_waker(&wb)),
            Poll::Ready(Ok(()))
        );
        assert_eq!(wal.writes_for_test(), 1);
        assert!(wal.is_durable(a) && wal.is_durable(b));
        assert!(!flag_a.0.load(Ordering::SeqCst));
        set_thread_turn_deferrer(None);
        DEFERRED.with_borrow_mut(Vec::clear);
    }

    #[test]
    fn off_mode_turn_driver_writes_for_parked_futures_even_if_its_own_frame_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        set_thread_turn_deferrer(Some(test_defer));
        let a = wal.append(b"A").expect("append");
        let mut fa = wal.durable(a);
        let flag_b = Arc::new(FlagWake(AtomicBool::new(false)));
        let wb = Waker::from(flag_b.clone());
        assert!(
            Pin::new(&mut fa)
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        // The background flush writes A before the driver's turn ends...
        wal.flush_buffers().expect("flush");
        assert!(wal.is_durable(a));
        // ...and B, appended after, parks behind the still-scheduled driver.
        let b = wal.append(b"B").expect("append");
        let mut fb = wal.durable(b);
        assert!(
            Pin::new(&mut fb)
                .poll(&mut Context::from_waker(&wb))
                .is_pending()
        );
        assert_eq!(
            Pin::new(&mut fa).poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Ok(()))
        );
        assert!(wal.is_durable(b), "the driver wrote B");
        assert!(flag_b.0.load(Ordering::SeqCst), "and woke it");
        assert_eq!(
            Pin::new(&mut fb).poll(&mut Context::from_waker(&wb)),
            Poll::Ready(Ok(()))
        );
        set_thread_turn_deferrer(None);
        DEFERRED.with_borrow_mut(Vec::clear);
    }

    #[test]
    fn durable_future_works_under_monoio_and_tokio_both_modes() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = open(dir.path(), sync);
            monoio_appenders(&wal, 16, 20, "m");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let wal = wal.clone();
                        tokio::spawn(async move {
                            for i in 0..20 {
                                let pos = wal.append(format!("k{t}-{i}").as_bytes())?;
                                wal.durable(pos).await?;
                                tokio::task::yield_now().await;
                            }
                            Ok::<(), StateError>(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("join").expect("tokio task");
                }
            });
            let got = read_all(&wal.rotate().expect("rotate"));
            assert_eq!(got.len(), 640, "sync={sync}");
            assert_eq!(got.iter().collect::<HashSet<_>>().len(), 640);
        }
    }

    #[test]
    fn reader_cuts_torn_and_corrupt_frames_and_survives_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(&dir.path().join("wal"), false);
        let expect: Vec<Vec<u8>> = (0..10).map(payload).collect();
        for p in &expect {
            wal.append(p).expect("append");
        }
        let segs = wal.rotate().expect("rotate");
        let full = fs::read(&segs[0]).expect("read file");
        let scratch = dir.path().join("scratch");
        let read = |bytes: &[u8]| {
            fs::write(&scratch, bytes).expect("write scratch");
            let mut got = Vec::new();
            let r = read_segment(&scratch, |p| got.push(p.to_vec())).expect("read");
            assert_eq!(r.bytes + r.cut_bytes, bytes.len() as u64);
            assert_eq!(r.frames, got.len() as u64);
            (got, r)
        };

        // Torn tail: the last frame lost 3 bytes.
        let (got, r) = read(&full[..full.len() - 3]);
        assert_eq!(got, expect[..9]);
        assert_eq!(r.cut_bytes, (HEADER + expect[9].len() - 3) as u64);
        // Torn inside a header.
        let (got, r) = read(&full[..full.len() - expect[9].len() - 5]);
        assert_eq!(got, expect[..9]);
        assert_eq!(r.cut_bytes, 3);

        // A flipped payload byte in frame 4: the CRC stops there.
        let frame4 = SEG_HEADER + expect[..4].iter().map(|p| HEADER + p.len()).sum::<usize>();
        let mut flipped = full.clone();
        flipped[frame4 + HEADER + 2] ^= 0x40;
        let (got, r) = read(&flipped);
        assert_eq!(got, expect[..4]);
        assert_eq!(r.cut_bytes, (full.len() - frame4) as u64);
        // A zero length, and a length above 16 MiB, stop too.
        let mut zero = full.clone();
        zero[frame4..frame4 + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(read(&zero).0, expect[..4]);
        let mut huge = full.clone();
        huge[frame4..frame4 + 4].copy_from_slice(&(MAX_FRAME_LIMIT as u32 + 1).to_le_bytes());
        assert_eq!(read(&huge).0, expect[..4]);

        // No magic (e.g. empty after a crash right after create): 0 frames, all cut.
        assert_eq!(read(b"").1, ReadReport::default());
        let (got, r) = read(&full[8..]);
        assert!(got.is_empty());
        assert_eq!(r.cut_bytes, full.len() as u64 - 8);
        assert_eq!(read(&full[..5]).1.cut_bytes, 5);

        // Garbage, with and without the magic: never a panic, lengths add up.
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..300 {
            let len = rng.usize(0..400);
            let mut g: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if i % 2 == 0 {
                g.splice(0..0, MAGIC.iter().copied());
            }
            read(&g);
        }
        assert!(matches!(
            read_segment(&dir.path().join("missing.wal"), |_| {}),
            Err(StateError::Unavailable(_))
        ));
    }

    fn free_files(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry"))
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(FREE_PREFIX))
            })
            .map(|e| (e.path(), e.metadata().expect("stat").len()))
            .collect();
        v.sort();
        v
    }

    /// A sync-mode wal in `dir` with 4 KiB segments and a pool of `recycle` free files.
    fn recycling_wal(dir: &Path, recycle: usize) -> Arc<Wal> {
        let mut cfg = WalConfig::new(dir.to_path_buf(), true);
        cfg.segment_bytes = 4096;
        cfg.recycle_segments = recycle;
        Wal::open(cfg).expect("open wal")
    }

    /// `n` frames of 100 bytes (108 with the header) tagged `tag`: the same sizes for every
    /// tag, so frames of two uses of a file sit at the same offsets.
    fn sized_frames(tag: &str, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{tag}-{i:04}-{}", "x".repeat(88)).into_bytes())
            .collect()
    }

    /// Appends each frame and waits until it is durable.
    fn append_durably(wal: &Arc<Wal>, frames: &[Vec<u8>]) {
        monoio_block_on(async {
            for p in frames {
                let pos = wal.append(p).expect("append");
                wal.durable(pos).await.expect("durable");
            }
        });
    }

    /// Recycling: full segments are closed at `segment_bytes`, removed ones become free files
    /// of full length (at most `recycle_segments`), a new segment reuses one without growing
    /// it, and the frames its earlier use left behind (same sizes, same offsets) are never
    /// read back. Reopening keeps the pool up to its bound and deletes the rest.
    #[test]
    fn recycled_segments_keep_their_length_and_never_replay_earlier_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = recycling_wal(dir.path(), 2);
        let old = sized_frames("old", 100);
        append_durably(&wal, &old);
        let sealed = wal.rotate().expect("rotate");
        assert!(
            sealed.len() >= 3,
            "100 frames of 108 bytes span 3+ segments of 4 KiB"
        );
        for p in &sealed {
            let len = fs::metadata(p).expect("stat").len();
            assert!(len <= 4096, "{} is {len} bytes: over the cap", p.display());
        }
        assert_eq!(read_all(&sealed), old, "frames across segments, in order");
        wal.remove_sealed(&sealed).expect("remove");
        let free = free_files(dir.path());
        assert_eq!(free.len(), 2, "pool bounded by recycle_segments: {free:?}");
        assert!(
            free.iter().all(|f| f.1 == 4096),
            "padded to full length: {free:?}"
        );
        assert!(list_segments(dir.path()).expect("list").is_empty());

        // New frames of the same size land at the same offsets as the old ones.
        let new = sized_frames("new", 10);
        append_durably(&wal, &new);
        assert_eq!(free_files(dir.path()).len(), 1, "one free file reused");
        let live = list_segments(dir.path()).expect("list");
        assert_eq!(live.len(), 1);
        assert_eq!(
            fs::metadata(&live[0]).expect("stat").len(),
            4096,
            "a reused file keeps its length (no size change to commit)"
        );
        assert_eq!(
            read_all(&live),
            new,
            "no frame of the file's earlier use is read"
        );
        let sealed = wal.rotate().expect("rotate");
        assert_eq!(read_all(&sealed), new);
        drop(wal);

        // Reopen with a smaller pool: the surplus is deleted; with none, all are.
        let wal = recycling_wal(dir.path(), 1);
        assert_eq!(free_files(dir.path()).len(), 1);
        drop(wal);
        let wal = recycling_wal(dir.path(), 0);
        assert!(free_files(dir.path()).is_empty());
        drop(wal);
    }

    /// Across a restart with no segment left (all folded and recycled), the generation counter
    /// starts above the free files' generations: a reused file never gets the generation of
    /// frames it still holds, which would make them read as valid.
    #[test]
    fn generations_after_a_restart_stay_above_recycled_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = recycling_wal(dir.path(), 2);
        append_durably(&wal, &sized_frames("old", 30));
        let sealed = wal.rotate().expect("rotate");
        assert_eq!(sealed.len(), 1, "30 frames fit one 4 KiB segment");
        wal.remove_sealed(&sealed).expect("remove");
        drop(wal);
        assert_eq!(free_files(dir.path()).len(), 1);
        assert!(list_segments(dir.path()).expect("list").is_empty());

        let wal = recycling_wal(dir.path(), 2);
        let new = sized_frames("new", 5);
        append_durably(&wal, &new);
        assert!(
            free_files(dir.path()).is_empty(),
            "the free file was reused"
        );
        let live = list_segments(dir.path()).expect("list");
        assert_eq!(read_all(&live), new, "no frame of the previous run is read");
    }

    /// The reader takes both formats, and a recycled file whose header still names its
    /// earlier generation (a crash between the rename and the new header) holds nothing.
    #[test]
    fn reader_takes_v1_segments_and_ignores_a_stale_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let frames = |mask: u32| {
            let mut out = Vec::new();
            for p in [b"one".as_slice(), b"two"] {
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
                out.extend_from_slice(&(crc32fast::hash(p) ^ mask).to_le_bytes());
                out.extend_from_slice(p);
            }
            out
        };
        let v1 = dir.path().join(segment_name(3, 0));
        fs::write(&v1, [MAGIC_V1.as_slice(), &frames(0)].concat()).expect("write");
        assert_eq!(
            read_all(std::slice::from_ref(&v1)),
            vec![b"one".to_vec(), b"two".to_vec()]
        );

        let v2 = |generation: u64, mask_gen: u64| {
            [
                MAGIC.as_slice(),
                &generation.to_le_bytes(),
                &frames(gen_mask(mask_gen)),
            ]
            .concat()
        };
        let good = dir.path().join(segment_name(5, 0));
        fs::write(&good, v2(5, 5)).expect("write");
        assert_eq!(read_all(std::slice::from_ref(&good)).len(), 2);
        // Header of generation 4 in the file of generation 5.
        let stale = dir.path().join(segment_name(6, 0));
        fs::write(&stale, v2(4, 4)).expect("write");
        let r = read_segment(&stale, |_| panic!("stale frame read")).expect("read");
        assert_eq!((r.frames, r.cut_bytes), (0, v2(4, 4).len() as u64));
        // Frames masked for another generation than the header's: not read.
        fs::write(&good, v2(5, 4)).expect("write");
        assert!(read_all(std::slice::from_ref(&good)).is_empty());
    }

    #[test]
    fn off_mode_write_failure_fails_the_lane_then_recovery_keeps_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        let a = wal.append(b"A").expect("append");
        block_on(wal.durable(a)).expect("A durable");

        // Keep failing until told otherwise, so the failed state is observable.
        wal.fail_next_writes_for_test(1_000_000);
        let b = wal.append(b"B").expect("append B");
        let r = block_on(wal.durable(b));
        assert!(is_unavailable(&r), "{r:?}");
        assert!(!wal.is_healthy());
        assert!(!wal.is_durable(b));
        assert!(is_unavailable(&wal.append(b"C")));
        // A due retry fails again while the disk keeps failing.
        std::thread::sleep(RETRY_MIN + Duration::from_millis(5));
        assert!(wal.flush_buffers().is_err());
        assert!(!wal.is_healthy());

        wal.fail_next_writes_for_test(0);
        wait_until("recovery", || {
            let _ = wal.flush_buffers();
            wal.is_healthy()
        });
        // The kept bytes (B) landed in the new segment.
        assert!(wal.is_durable(b));
        let d = wal.append(b"D").expect("append after recovery");
        block_on(wal.durable(d)).expect("D durable");

        let segs = wal.rotate().expect("rotate");
        assert!(segs.len() >= 2, "{segs:?}");
        let got = read_all(&segs);
        assert_eq!(got, vec![b"A".to_vec(), b"B".to_vec(), b"D".to_vec()]);
    }

    #[test]
    fn sync_mode_fdatasync_failure_then_recovery_without_repeated_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        let a = wal.append(b"A").expect("append");
        block_on(wal.durable(a)).expect("A durable");

        // B reaches the file, its fdatasync fails (and keeps failing in the retries).
        wal.fail_next_syncs_for_test(1_000_000);
        let b = wal.append(b"B").expect("append B");
        let r = monoio_block_on(wal.durable(b));
        assert!(is_unavailable(&r), "{r:?}");
        assert!(!wal.is_healthy());
        assert!(is_unavailable(&wal.append(b"C")));
        // A position that failed stays failed while the lane is failed.
        assert!(is_unavailable(&block_on(wal.durable(b))));

        wal.fail_next_syncs_for_test(0);
        wait_until("recovery", || wal.is_healthy());
        assert!(wal.is_durable(b));
        let d = wal.append(b"D").expect("append after recovery");
        monoio_block_on(wal.durable(d)).expect("D durable");

        // Every failed segment was cut back to its last fdatasync: B exists once.
        let got = read_all(&wal.rotate().expect("rotate"));
        assert_eq!(got, vec![b"A".to_vec(), b"B".to_vec(), b"D".to_vec()]);
    }

    /// A hung fdatasync (sync mode) or write (off mode): the watchdog fails the lane's waiters
    /// and new appends after `io_timeout`, not when the call returns; once it returns the lane
    /// recovers by itself and the stalled frame is in the log exactly once.
    #[test]
    fn watchdog_fails_a_hung_io_call_after_the_timeout_then_the_lane_recovers() {
        for sync in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cfg = WalConfig::new(dir.path().to_path_buf(), sync);
            // Well above a real fdatasync on a busy CI box (one took 116 ms beside the other
            // tests), well below the stall.
            cfg.io_timeout = Some(Duration::from_millis(500));
            let wal = Wal::open(cfg).expect("open wal");
            let a = wal.append(b"A").expect("append");
            block_on(wal.durable(a)).expect("A durable");

            wal.stall_next_io_for_test(Duration::from_millis(4_000));
            let t0 = Instant::now();
            let (r, waited) = if sync {
                // The sync thread hangs; this thread's future is answered by the watchdog.
                let b = wal.append(b"B").expect("append B");
                let r = monoio_block_on(wal.durable(b));
                (r, t0.elapsed())
            } else {
                // Off mode: the appending thread itself makes the hung write; another thread
                // sees the lane fail while it hangs.
                let w = Arc::clone(&wal);
                let hung = std::thread::spawn(move || {
                    let b = w.append(b"B").expect("append B");
                    monoio_block_on(w.durable(b))
                });
                wait_until("lane failed by the watchdog", || !wal.is_healthy());
                let waited = t0.elapsed();
                // The write itself returned in the end: durable wins.
                let r = hung.join().expect("join");
                assert!(r.is_ok(), "off mode: {r:?}");
                (
                    Err(StateError::Unavailable("seen by the watchdog".into())),
                    waited,
                )
            };
            assert!(is_unavailable(&r), "sync={sync}: {r:?}");
            assert!(
                waited < Duration::from_millis(3_000),
                "sync={sync}: the watchdog took {waited:?}"
            );
            if sync {
                assert!(!wal.is_healthy());
                let t1 = Instant::now();
                assert!(
                    is_unavailable(&wal.append(b"C")),
                    "appends refused while hung"
                );
                assert!(t1.elapsed() < Duration::from_millis(300));
            }
            // Off mode recovers from the background `flush_buffers` (the journal's tick).
            wait_until("recovery", || {
                let _ = wal.flush_buffers();
                wal.is_healthy()
            });
            let d = wal.append(b"D").expect("append after recovery");
            monoio_block_on(wal.durable(d)).expect("D durable");
            let mut got = read_all(&wal.rotate().expect("rotate"));
            // Off mode: B is on the hung thread's own lane (lanes have no order between them).
            got.sort();
            assert_eq!(
                got,
                vec![b"A".to_vec(), b"B".to_vec(), b"D".to_vec()],
                "sync={sync}"
            );
        }
    }

    /// Without `io_timeout` a slow fdatasync is simply waited for.
    #[test]
    fn without_a_watchdog_a_slow_fdatasync_is_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        wal.stall_next_io_for_test(Duration::from_millis(300));
        let t0 = Instant::now();
        let b = wal.append(b"B").expect("append B");
        monoio_block_on(wal.durable(b)).expect("B durable");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(wal.is_healthy());
    }

    #[test]
    fn sync_mode_write_failure_recovers_with_backoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        // The failed write, then two failed recovery attempts (20 ms, then 40 ms later).
        wal.fail_next_writes_for_test(3);
        let a = wal.append(b"A").expect("append");
        let t0 = Instant::now();
        assert!(is_unavailable(&block_on(wal.durable(a))));
        wait_until("recovery", || wal.is_healthy());
        assert!(t0.elapsed() >= RETRY_MIN * 3, "{:?}", t0.elapsed());
        assert!(wal.is_durable(a));
        let b = wal.append(b"B").expect("append");
        block_on(wal.durable(b)).expect("B durable");
        let got = read_all(&wal.rotate().expect("rotate"));
        assert_eq!(got, vec![b"A".to_vec(), b"B".to_vec()]);
    }

    #[test]
    fn rotate_lifecycle_and_generations_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Left by a crash right after create; and a file that is not a segment.
        let empty = dir.path().join(segment_name(5, 0));
        fs::write(&empty, b"").expect("write");
        let notes = dir.path().join("notes.txt");
        fs::write(&notes, b"x").expect("write");

        let wal = open(dir.path(), false);
        wal.append(b"A").expect("append");
        let segs = wal.rotate().expect("rotate");
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0], empty);
        assert!(generation_of(&segs[1]) > 5);
        assert_eq!(read_all(&segs), vec![b"A".to_vec()]);
        // Not removed yet: returned again.
        assert_eq!(wal.rotate().expect("rotate"), segs);
        assert!(matches!(
            wal.remove_sealed(std::slice::from_ref(&notes)),
            Err(StateError::Invalid(_))
        ));
        wal.remove_sealed(&segs).expect("remove");
        assert!(segs.iter().all(|p| !p.exists()));
        assert!(notes.exists());
        assert!(wal.rotate().expect("rotate").is_empty());

        wal.append(b"B").expect("append");
        let b_segs = wal.rotate().expect("rotate");
        assert_eq!(b_segs.len(), 1);
        assert!(generation_of(&b_segs[0]) > generation_of(&segs[1]));
        drop(wal);

        let wal = open(dir.path(), false);
        assert_eq!(list_segments(dir.path()).expect("list"), b_segs);
        wal.append(b"C").expect("append");
        let all = wal.rotate().expect("rotate");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], b_segs[0], "found at open, oldest first");
        assert!(generation_of(&all[1]) > generation_of(&b_segs[0]));
        assert_eq!(read_all(&all), vec![b"B".to_vec(), b"C".to_vec()]);
        assert_eq!(list_segments(dir.path()).expect("list"), all);
        wal.remove_sealed(&all[..1]).expect("remove");
        assert_eq!(wal.rotate().expect("rotate"), all[1..]);
    }

    /// Ops one at a time (light load) do not wait for the linger: each sync completes one
    /// waiter, so the next waits 1/64 of it. A fixed 1 s linger would take ~9 s here.
    #[test]
    fn sync_mode_lingers_only_under_load() {
        assert_eq!(linger_after(Duration::from_millis(64), 0), Duration::ZERO);
        assert_eq!(
            linger_after(Duration::from_millis(64), 16),
            Duration::from_millis(16)
        );
        assert_eq!(
            linger_after(Duration::from_millis(64), 640),
            Duration::from_millis(64)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = WalConfig::new(dir.path().to_path_buf(), true);
        cfg.sync_linger = Duration::from_secs(1);
        let wal = Wal::open(cfg).expect("open wal");
        let t0 = Instant::now();
        monoio_block_on(async {
            for i in 0..10 {
                let pos = wal.append(&payload(i)).expect("append");
                wal.durable(pos).await.expect("durable");
            }
        });
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(900),
            "10 lone ops took {took:?}"
        );
        // Each lone op waited for (and was completed by) an fdatasync of its own.
        let (syncs, waiters) = wal.sync_counts();
        assert_eq!(waiters, 10);
        assert!(syncs >= 10, "{syncs} fdatasyncs");
        assert_eq!(read_all(&wal.rotate().expect("rotate")).len(), 10);
    }

    #[test]
    fn sync_mode_concurrent_tasks_group_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        let ops = 8 * 100;
        monoio_appenders(&wal, 8, 100, "");
        let (syncs, waiters) = wal.sync_counts();
        assert!(syncs < ops, "{syncs} fdatasyncs for {ops} ops");
        assert!(
            (1..=ops).contains(&waiters),
            "{waiters} waiters for {ops} ops"
        );
        assert_eq!(read_all(&wal.rotate().expect("rotate")).len(), ops as usize);
    }

    #[test]
    fn limits_answer_invalid_and_overloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = WalConfig::new(dir.path().to_path_buf(), false);
        cfg.max_frame_bytes = 100;
        cfg.max_lane_buffer_bytes = 1024;
        let wal = Wal::open(cfg.clone()).expect("open");
        assert!(matches!(wal.append(b""), Err(StateError::Invalid(_))));
        assert!(matches!(wal.append(&[0; 101]), Err(StateError::Invalid(_))));
        let mut last = Pos::default();
        for _ in 0..1024 / 108 {
            last = wal.append(&[1; 100]).expect("append");
        }
        assert_eq!(wal.append(&[1; 100]), Err(StateError::Overloaded));
        block_on(wal.durable(last)).expect("durable");
        wal.append(&[1; 100]).expect("room again once written");

        for (lanes, frame) in [
            (0, 100),
            (MAX_LANES_LIMIT + 1, 100),
            (1, MAX_FRAME_LIMIT + 1),
        ] {
            let mut c = cfg.clone();
            c.max_lanes = lanes;
            c.max_frame_bytes = frame;
            c.max_lane_buffer_bytes = 64 << 20;
            assert!(matches!(Wal::open(c), Err(StateError::Invalid(_))));
        }
        assert!(matches!(
            block_on(wal.durable(Pos { lane: 9, end: 1 })),
            Err(StateError::Invalid(_))
        ));
        assert!(block_on(wal.durable(Pos::default())).is_ok());
    }

    struct CountWake;
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {}
    }

    struct Counted(AtomicU64);
    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The sync thread wakes one waiter per thread and hands it the others' wakers; the
    /// woken one wakes them when polled, or when dropped unpolled (none is left asleep).
    #[test]
    fn sync_wakes_one_waiter_per_thread_and_a_dropped_head_passes_the_wake_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        let mut futs = Vec::new();
        let counts: Vec<Arc<Counted>> = (0..3)
            .map(|_| Arc::new(Counted(AtomicU64::new(0))))
            .collect();
        {
            let p0 = wal.append(b"A").expect("append");
            let lane = wal.lane(p0.lane).expect("lane").clone();
            // Holding the writer lock keeps the sync thread from completing anything yet.
            let _io = lock(&lane.io);
            let mut pos = vec![p0];
            pos.push(wal.append(b"B").expect("append"));
            pos.push(wal.append(b"C").expect("append"));
            for (p, c) in pos.into_iter().zip(&counts) {
                let mut f = wal.durable(p);
                let waker = Waker::from(Arc::clone(c));
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
                futs.push(Some(f));
            }
        }
        let woken = |counts: &[Arc<Counted>]| -> Vec<u64> {
            counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
        };
        wait_until("the head wake", || woken(&counts).iter().sum::<u64>() >= 1);
        std::thread::sleep(Duration::from_millis(50));
        let w = woken(&counts);
        assert_eq!(
            w.iter().sum::<u64>(),
            1,
            "one cross-thread wake for the thread: {w:?}"
        );
        let head = w.iter().position(|&n| n == 1).expect("a woken head");
        // Dropped without being polled: it must wake the two it carries.
        futs[head] = None;
        assert_eq!(woken(&counts), vec![1, 1, 1]);
        for f in futs.iter_mut().flatten() {
            let waker = Waker::from(Arc::new(CountWake));
            let mut cx = Context::from_waker(&waker);
            assert!(matches!(Pin::new(f).poll(&mut cx), Poll::Ready(Ok(()))));
        }
    }

    #[test]
    fn sync_mode_repolls_and_cancelled_futures_do_not_grow_the_waiter_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), true);
        let pos = wal.append(b"A").expect("append");
        let lane = wal.lane(pos.lane).expect("lane").clone();
        let mut fut = wal.durable(pos);
        {
            // Holding the writer lock keeps the sync thread from completing anything.
            let _io = lock(&lane.io);
            for _ in 0..100 {
                let waker = Waker::from(Arc::new(CountWake));
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
            }
            assert_eq!(lock(&lane.waiters).list.len(), 1);
            for _ in 0..10 {
                let mut other = wal.durable(pos);
                let waker = Waker::from(Arc::new(CountWake));
                assert!(
                    Pin::new(&mut other)
                        .poll(&mut Context::from_waker(&waker))
                        .is_pending()
                );
            }
            assert_eq!(lock(&lane.waiters).list.len(), 1, "cancelled ones left");
        }
        block_on(fut).expect("durable");
        assert!(lock(&lane.waiters).list.is_empty());
    }

    #[test]
    fn flush_buffers_writes_bytes_no_future_drives() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = open(dir.path(), sync);
            let pos = wal.append(b"orphan").expect("append");
            assert!(!wal.is_durable(pos));
            wait_until("flush", || {
                wal.flush_buffers().expect("flush");
                wal.is_durable(pos)
            });
            // In the OS (readable) before any rotate.
            let segs = list_segments(dir.path()).expect("list");
            assert_eq!(read_all(&segs), vec![b"orphan".to_vec()], "sync={sync}");
        }
    }

    #[test]
    fn dropping_the_wal_resolves_pending_futures_and_writes_buffers() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let wal = open(dir.path(), sync);
            let pos = wal.append(b"last").expect("append");
            let fut = wal.durable(pos);
            drop(wal);
            assert_eq!(block_on(fut), Ok(()), "sync={sync}");
            let segs = list_segments(dir.path()).expect("list");
            assert_eq!(read_all(&segs), vec![b"last".to_vec()]);
        }
    }

    #[test]
    fn sync_all_fdatasyncs_in_off_mode_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path(), false);
        let pos = wal.append(b"A").expect("append");
        let before = wal.sync_counts().0;
        wal.sync_all().expect("sync_all");
        assert!(wal.is_durable(pos));
        assert_eq!(wal.sync_counts().0, before + 1);
        let lane = wal.lane(pos.lane).expect("lane");
        assert_eq!(lane.synced.load(Ordering::Acquire), pos.end);
    }
}
