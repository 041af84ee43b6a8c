//! The durable callback outbox: one fjall database (keyspace `events`) keyed by event id, and
//! one writer thread that applies queued operations in batches.
//!
//! * `Put` (a new event) is committed with `SyncData`, one fsync per batch, and only then
//!   answered: the caller's future resolving `true` means the event survives a crash. A put
//!   of an id already in the outbox is a no-op (the event is already scheduled): this is what
//!   makes re-notification after a crash harmless.
//! * `Reschedule` (attempt count, next due time) and `Delete` (delivered or given up) are
//!   buffered writes: if they are lost in a crash, the event is simply sent again (at least
//!   once), never lost.
//!
//! New events go from the writer to the dispatcher after their commit, over an unbounded
//! channel whose length is bounded by the `pending` reservation count (`max_pending`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::CallbackError;

/// Most operations committed in one batch.
const MAX_BATCH: usize = 512;

/// One event waiting for delivery, as stored (JSON value under the key `event_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub event_id: String,
    pub app_id: u64,
    pub url: String,
    /// POSTs tried so far.
    pub attempts: u32,
    /// When the event was created (Unix ms); `max_age_s` counts from here.
    pub created_ms: u64,
    /// Not before (Unix ms).
    pub next_due_ms: u64,
    /// The event's JSON object, as sent.
    pub body: String,
}

pub(super) enum Op {
    Put(Entry, async_channel::Sender<bool>),
    Reschedule(Entry),
    Delete(String),
}

/// Handle of the outbox; dropping it stops the writer after it commits what is queued.
pub struct Outbox {
    tx: async_channel::Sender<Op>,
    writer: Option<JoinHandle<()>>,
}

impl Outbox {
    /// Opens (creates) the database at `path`, reads every stored event (returned, to be
    /// scheduled) and starts the writer. `pending` is set to the number of stored events.
    pub(super) fn open(
        path: &Path,
        queue_capacity: usize,
        pending: Arc<AtomicUsize>,
        new_events: tokio::sync::mpsc::UnboundedSender<Entry>,
    ) -> Result<(Outbox, Vec<Entry>), CallbackError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CallbackError::Outbox(format!("{what} {}: {e}", path.display()))
        };
        std::fs::create_dir_all(path).map_err(|e| fail("create", &e))?;
        // A small, write-mostly database: a modest block cache and one background worker
        // (the state store is the one that needs the machine's I/O).
        let db = Database::builder(path)
            .cache_size(8 * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(|e| fail("open", &e))?;
        let ks = db
            .keyspace("events", KeyspaceCreateOptions::default)
            .map_err(|e| fail("open keyspace in", &e))?;
        let mut leftovers = Vec::new();
        let mut corrupt = Vec::new();
        for kv in ks.iter() {
            let (k, v) = kv.into_inner().map_err(|e| fail("read", &e))?;
            match serde_json::from_slice::<Entry>(&v) {
                Ok(e) => leftovers.push(e),
                Err(e) => {
                    warn!(error = %e, "callback outbox: undecodable entry removed");
                    corrupt.push(k);
                }
            }
        }
        for k in corrupt {
            ks.remove(k).map_err(|e| fail("clean", &e))?;
        }
        pending.store(leftovers.len(), Ordering::Release);
        let (tx, rx) = async_channel::bounded(queue_capacity);
        let writer = std::thread::Builder::new()
            .name("callback-outbox".into())
            .spawn(move || write_loop(db, ks, rx, pending, new_events))
            .map_err(|e| fail("spawn writer for", &e))?;
        Ok((
            Outbox {
                tx,
                writer: Some(writer),
            },
            leftovers,
        ))
    }

    /// Queues a new event; the receiver answers `true` once it is durable. `Err` when the
    /// writer queue is full or closed (never blocks: shards call this).
    pub(super) fn put(&self, e: Entry) -> Result<async_channel::Receiver<bool>, &'static str> {
        let (done_tx, done_rx) = async_channel::bounded(1);
        match self.tx.try_send(Op::Put(e, done_tx)) {
            Ok(()) => Ok(done_rx),
            Err(async_channel::TrySendError::Full(_)) => Err("outbox writer queue full"),
            Err(async_channel::TrySendError::Closed(_)) => Err("outbox closed"),
        }
    }

    /// The operation queue, for the dispatcher (which awaits room instead of failing).
    pub(super) fn ops(&self) -> async_channel::Sender<Op> {
        self.tx.clone()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Closing lets the writer drain what is queued and stop, whoever else holds a
        // sender (the dispatcher's later operations fail; they are retried after restart).
        self.tx.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(
    db: Database,
    ks: Keyspace,
    rx: async_channel::Receiver<Op>,
    pending: Arc<AtomicUsize>,
    new_events: tokio::sync::mpsc::UnboundedSender<Entry>,
) {
    let mut ops: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv_blocking() {
        ops.push(first);
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        commit(&db, &ks, &mut ops, &pending, &new_events);
    }
    let _ = db.persist(PersistMode::SyncAll);
}

/// Applies one batch of operations and answers the puts.
fn commit(
    db: &Database,
    ks: &Keyspace,
    ops: &mut Vec<Op>,
    pending: &AtomicUsize,
    new_events: &tokio::sync::mpsc::UnboundedSender<Entry>,
) {
    let mut batch = db.batch();
    let mut durable = false;
    let mut seen: HashSet<String> = HashSet::new();
    // (entry, is new, waiter)
    let mut puts: Vec<(Entry, bool, async_channel::Sender<bool>)> = Vec::new();
    for op in ops.drain(..) {
        match op {
            Op::Put(e, done) => {
                durable = true;
                // Already stored (a repeat after a crash, or a duplicate receipt): keep the
                // stored one with its schedule; the reservation is released below.
                let exists = seen.contains(&e.event_id)
                    || matches!(ks.get(e.event_id.as_bytes()), Ok(Some(_)));
                if !exists {
                    seen.insert(e.event_id.clone());
                    batch.insert(ks, e.event_id.as_bytes(), encode(&e));
                }
                puts.push((e, !exists, done));
            }
            Op::Reschedule(e) => batch.insert(ks, e.event_id.as_bytes(), encode(&e)),
            Op::Delete(id) => batch.remove(ks, id.into_bytes()),
        }
    }
    let batch = if durable {
        batch.durability(Some(PersistMode::SyncData))
    } else {
        batch
    };
    let ok = match batch.commit() {
        Ok(()) => true,
        Err(e) => {
            error!(error = %e, "callback outbox: commit failed; new events in it are refused");
            false
        }
    };
    for (e, new, done) in puts {
        if !ok || !new {
            pending.fetch_sub(1, Ordering::AcqRel);
        } else if new_events.send(e).is_err() {
            // Dispatcher gone (shutting down): the event is stored and goes after restart.
        }
        let _ = done.try_send(ok);
    }
}

fn encode(e: &Entry) -> Vec<u8> {
    // Serializing a struct of strings and integers cannot fail.
    serde_json::to_vec(e).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            event_id: id.into(),
            app_id: 1,
            url: "http://127.0.0.1:9/cb".into(),
            attempts: 0,
            created_ms: 1,
            next_due_ms: 2,
            body: "{}".into(),
        }
    }

    #[test]
    fn puts_survive_reopen_duplicates_are_ignored_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Arc::new(AtomicUsize::new(0));
        let (new_tx, mut new_rx) = tokio::sync::mpsc::unbounded_channel();
        let (outbox, left) = Outbox::open(dir.path(), 16, Arc::clone(&pending), new_tx).unwrap();
        assert!(left.is_empty());
        for id in ["1:a:submitted", "1:b:submitted", "1:a:submitted"] {
            pending.fetch_add(1, Ordering::AcqRel);
            let done = outbox.put(entry(id)).unwrap();
            assert!(done.recv_blocking().unwrap(), "put {id} acknowledged");
        }
        // The repeat released its reservation and was not dispatched twice.
        assert_eq!(pending.load(Ordering::Acquire), 2);
        assert_eq!(new_rx.try_recv().unwrap().event_id, "1:a:submitted");
        assert_eq!(new_rx.try_recv().unwrap().event_id, "1:b:submitted");
        assert!(new_rx.try_recv().is_err());
        let mut resched = entry("1:b:submitted");
        resched.attempts = 3;
        resched.next_due_ms = 99;
        outbox
            .ops()
            .send_blocking(Op::Reschedule(resched.clone()))
            .unwrap();
        outbox
            .ops()
            .send_blocking(Op::Delete("1:a:submitted".into()))
            .unwrap();
        drop(outbox);

        let pending = Arc::new(AtomicUsize::new(0));
        let (new_tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (_outbox, left) = Outbox::open(dir.path(), 16, Arc::clone(&pending), new_tx).unwrap();
        assert_eq!(left, vec![resched]);
        assert_eq!(pending.load(Ordering::Acquire), 1);
    }

    #[test]
    fn full_queue_refuses_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Arc::new(AtomicUsize::new(0));
        let (new_tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (outbox, _) = Outbox::open(dir.path(), 1, pending, new_tx).unwrap();
        // Fill faster than the writer drains: at least one try_send must be refused, and none
        // may block.
        let mut refused = 0;
        let mut waits = Vec::new();
        for i in 0..200 {
            match outbox.put(entry(&format!("1:{i}:submitted"))) {
                Ok(w) => waits.push(w),
                Err(why) => {
                    assert_eq!(why, "outbox writer queue full");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "a queue of 1 took 200 puts without refusing");
        for w in waits {
            assert!(w.recv_blocking().unwrap());
        }
    }
}
