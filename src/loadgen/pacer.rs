//! A precise wake-up source for the open-loop schedule.
//!
//! monoio's timer wheel has 1 ms ticks and only advances when the runtime parks, so a request
//! due at t is sent anywhere up to ~1-2 ms after t, and that client-side delay would be
//! charged to the server as latency. The pacer is one helper thread per generator thread that
//! sleeps on a condition variable with a nanosecond timeout (futex: ~50 µs accuracy) and wakes
//! the waiting connection's task through its `Waker` (monoio's cross-thread wake, which
//! unparks the runtime). Each connection has one slot, so the pending set is bounded by the
//! number of connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Instant;

struct Slot {
    deadline: Option<Instant>,
    waker: Option<Waker>,
}

struct State {
    slots: Vec<Slot>,
    /// (deadline, slot); entries whose slot moved on are skipped when popped.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    stop: bool,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the heap inconsistent in a way that
        // matters (worst case: a spurious or missed wake-up), so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owner of the helper thread; stops and joins it on drop.
pub struct Pacer {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// Cheap handle the connection tasks use.
#[derive(Clone)]
pub struct PacerHandle {
    inner: Arc<Inner>,
}

impl Pacer {
    pub fn start(slots: usize, name: String) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                slots: (0..slots)
                    .map(|_| Slot {
                        deadline: None,
                        waker: None,
                    })
                    .collect(),
                heap: BinaryHeap::with_capacity(slots * 2),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&worker))?;
        Ok(Self {
            inner,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> PacerHandle {
        PacerHandle {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.changed.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PacerHandle {
    /// Ask for `waker` to be woken at `deadline` (replacing the slot's previous request).
    pub fn register(&self, slot: usize, deadline: Instant, waker: &Waker) {
        let mut state = self.inner.lock();
        let Some(entry) = state.slots.get_mut(slot) else {
            debug_assert!(false, "pacer slot {slot} out of range");
            return;
        };
        let same = entry.deadline == Some(deadline);
        entry.deadline = Some(deadline);
        match &mut entry.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        if same {
            return;
        }
        let earliest = state.heap.peek().map(|Reverse((d, _))| *d);
        state.heap.push(Reverse((deadline, slot)));
        drop(state);
        if earliest.is_none_or(|e| deadline < e) {
            self.inner.changed.notify_one();
        }
    }

    /// The wait on `slot` ended for another reason; forget its deadline.
    pub fn cancel(&self, slot: usize) {
        if let Some(entry) = self.inner.lock().slots.get_mut(slot) {
            entry.deadline = None;
        }
    }
}

fn run(inner: &Inner) {
    let mut due: Vec<Waker> = Vec::new();
    let mut state = inner.lock();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((deadline, slot))) = state.heap.peek().copied() {
            if deadline > now {
                break;
            }
            state.heap.pop();
            let entry = &mut state.slots[slot];
            if entry.deadline == Some(deadline) {
                entry.deadline = None;
                if let Some(w) = entry.waker.take() {
                    due.push(w);
                }
            }
        }
        if !due.is_empty() {
            // Wake outside the lock: a wake-up unparks the runtime thread, which may want to
            // register its next deadline right away.
            drop(state);
            for w in due.drain(..) {
                w.wake();
            }
            state = inner.lock();
            continue;
        }
        state = match state.heap.peek() {
            Some(Reverse((deadline, _))) => {
                let timeout = deadline.saturating_duration_since(now);
                inner
                    .changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => inner
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    struct Flag(AtomicUsize, Mutex<Option<Instant>>);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            *self.1.lock().unwrap() = Some(Instant::now());
        }
    }

    #[test]
    fn wakes_at_the_deadline_not_before() {
        let pacer = Pacer::start(2, "pacer-test".into()).unwrap();
        let h = pacer.handle();
        let flag = Arc::new(Flag(AtomicUsize::new(0), Mutex::new(None)));
        let waker = Waker::from(flag.clone());
        let deadline = Instant::now() + Duration::from_millis(30);
        h.register(0, deadline, &waker);
        // A cancelled slot is never woken.
        let other = Arc::new(Flag(AtomicUsize::new(0), Mutex::new(None)));
        h.register(
            1,
            Instant::now() + Duration::from_millis(10),
            &Waker::from(other.clone()),
        );
        h.cancel(1);
        let give_up = Instant::now() + Duration::from_secs(5);
        while flag.0.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        let woke = flag.1.lock().unwrap().expect("woken");
        assert!(woke >= deadline, "woken early");
        assert_eq!(flag.0.load(Ordering::SeqCst), 1);
        assert_eq!(other.0.load(Ordering::SeqCst), 0);
        drop(pacer); // joins the thread: bounded
    }
}
