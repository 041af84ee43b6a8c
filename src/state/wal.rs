//! Per-thread ("lane") append-only write-ahead log of the journal state backend.
//! (Skeleton: API only; the implementation follows.)

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::StateError;

/// Configuration of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory of the segment files; created if missing.
    pub dir: PathBuf,
    /// True: a position is durable once fdatasync'ed; false: once written to the OS.
    pub sync: bool,
    /// Most lanes (default 64); threads beyond it share lanes (by a hash of the thread id).
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

/// Logical position: end offset of a frame in its lane's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Lane index.
    pub lane: u32,
    /// End offset of the frame in the lane's stream (monotonic across segments).
    pub end: u64,
}

/// What [`read_segment`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Intact frames passed to the callback.
    pub frames: u64,
    /// Bytes accepted (magic and intact frames).
    pub bytes: u64,
    /// Ignored tail (torn or corrupt frame and everything after it).
    pub cut_bytes: u64,
}

/// The write-ahead log.
pub struct Wal {
    _cfg: WalConfig,
}

/// Resolves once a position is durable.
pub struct DurableFuture {
    _p: (),
}

impl Future for DurableFuture {
    type Output = Result<(), StateError>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        todo!()
    }
}

impl Wal {
    /// Opens (creating `dir` if needed).
    pub fn open(cfg: WalConfig) -> Result<Arc<Wal>, StateError> {
        Ok(Arc::new(Wal { _cfg: cfg }))
    }
    /// Frames `payload` into the calling thread's lane buffer.
    pub fn append(&self, _payload: &[u8]) -> Result<Pos, StateError> {
        todo!()
    }
    /// True once `pos` is durable.
    pub fn is_durable(&self, _pos: Pos) -> bool {
        todo!()
    }
    /// Resolves once `pos` is durable.
    pub fn durable(self: &Arc<Self>, _pos: Pos) -> DurableFuture {
        todo!()
    }
    /// Seals the current segments; returns every sealed segment not yet removed.
    pub fn rotate(&self) -> Result<Vec<PathBuf>, StateError> {
        todo!()
    }
    /// Deletes sealed segments.
    pub fn remove_sealed(&self, _paths: &[PathBuf]) -> Result<(), StateError> {
        todo!()
    }
    /// Writes the buffers no future is driving.
    pub fn flush_buffers(&self) -> Result<(), StateError> {
        todo!()
    }
    /// Writes and fdatasyncs everything appended before the call.
    pub fn sync_all(&self) -> Result<(), StateError> {
        todo!()
    }
    /// Bytes appended since the last rotate.
    pub fn unrotated_bytes(&self) -> u64 {
        todo!()
    }
    /// False while some lane is failed.
    pub fn is_healthy(&self) -> bool {
        todo!()
    }
    /// Test hook: the next `n` segment writes or fdatasyncs fail.
    pub fn fail_next_writes_for_test(&self, _n: u64) {
        todo!()
    }
}

/// Existing segment files in `dir`, oldest generation first.
pub fn list_segments(_dir: &Path) -> Result<Vec<PathBuf>, StateError> {
    todo!()
}

/// Reads one segment, calling `f` with each intact payload in order.
pub fn read_segment(_path: &Path, _f: impl FnMut(&[u8])) -> Result<ReadReport, StateError> {
    todo!()
}
