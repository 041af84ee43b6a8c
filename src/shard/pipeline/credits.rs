//! Window credits of one bind: a shard-local, fair (FIFO) counting semaphore.
//!
//! The pipeline takes a message's credits BEFORE it writes the message's hand-over mark and
//! gives them back when the bind has answered every part, so the session's own queue stays
//! (nearly) empty and a message waiting for room in the window is not marked yet: after a
//! crash it is resubmitted instead of becoming `unknown`.
//!
//! Single-threaded (`Rc`/`Cell`, one shard). Fair: waiters are served strictly in arrival
//! order, a large request at the head is not overtaken by smaller ones behind it (no
//! starvation of multi-part messages). Cancellation-safe: a waiter dropped before its grant
//! leaves the queue (and lets the ones behind it proceed); one dropped after its grant but
//! before it was polled gives its credits back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A counting semaphore with `capacity` credits and at most `max_waiters` queued acquirers.
#[derive(Clone)]
pub struct Credits {
    inner: Rc<Inner>,
}

struct Inner {
    capacity: usize,
    max_waiters: usize,
    available: Cell<usize>,
    queue: RefCell<VecDeque<Rc<Waiter>>>,
}

struct Waiter {
    need: usize,
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Why [`Credits::acquire`] gave up at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyWaiters;

impl Credits {
    /// `capacity` is clamped to at least 1; `max_waiters` bounds the FIFO.
    pub fn new(capacity: usize, max_waiters: usize) -> Credits {
        let capacity = capacity.max(1);
        Credits {
            inner: Rc::new(Inner {
                capacity,
                max_waiters,
                available: Cell::new(capacity),
                queue: RefCell::new(VecDeque::new()),
            }),
        }
    }

    /// Credits free right now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.inner.available.get()
    }

    /// Whether `acquire(n)` would be granted at once (nobody waiting, enough free).
    pub fn can_take_now(&self, n: usize) -> bool {
        self.inner.queue.borrow().is_empty()
            && self.inner.available.get() >= n.clamp(1, self.inner.capacity)
    }

    /// Acquirers waiting in the FIFO.
    pub fn waiting(&self) -> usize {
        self.inner.queue.borrow().len()
    }

    /// Takes `n` credits (clamped to `1..=capacity`, so every request can be served), waiting
    /// in FIFO order. Refused at once when `max_waiters` are queued already. The returned
    /// guard gives the credits back when dropped.
    pub fn acquire(&self, n: usize) -> Result<Acquire, TooManyWaiters> {
        let need = n.clamp(1, self.inner.capacity);
        let queue_empty = self.inner.queue.borrow().is_empty();
        if queue_empty && self.inner.available.get() >= need {
            self.inner.available.set(self.inner.available.get() - need);
            return Ok(Acquire {
                credits: self.clone(),
                need,
                state: State::Ready,
            });
        }
        let mut queue = self.inner.queue.borrow_mut();
        if queue.len() >= self.inner.max_waiters {
            return Err(TooManyWaiters);
        }
        let waiter = Rc::new(Waiter {
            need,
            granted: Cell::new(false),
            waker: RefCell::new(None),
        });
        queue.push_back(Rc::clone(&waiter));
        Ok(Acquire {
            credits: self.clone(),
            need,
            state: State::Queued(waiter),
        })
    }

    fn release(&self, n: usize) {
        self.inner.available.set(self.inner.available.get() + n);
        self.dispatch();
    }

    /// Grants credits to the waiters at the head of the FIFO while they fit.
    fn dispatch(&self) {
        let mut queue = self.inner.queue.borrow_mut();
        while let Some(head) = queue.front() {
            let available = self.inner.available.get();
            if available < head.need {
                break;
            }
            self.inner.available.set(available - head.need);
            head.granted.set(true);
            if let Some(w) = head.waker.borrow_mut().take() {
                w.wake();
            }
            queue.pop_front();
        }
    }
}

enum State {
    /// Credits taken, not handed out yet.
    Ready,
    Queued(Rc<Waiter>),
    /// Turned into a guard (or given back).
    Done,
}

/// The future of [`Credits::acquire`].
pub struct Acquire {
    credits: Credits,
    need: usize,
    state: State,
}

impl Future for Acquire {
    type Output = CreditGuard;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CreditGuard> {
        let this = self.get_mut();
        let ready = match &this.state {
            State::Ready => true,
            State::Queued(w) => {
                if w.granted.get() {
                    true
                } else {
                    *w.waker.borrow_mut() = Some(cx.waker().clone());
                    false
                }
            }
            State::Done => panic!("Acquire polled after completion"),
        };
        if !ready {
            return Poll::Pending;
        }
        this.state = State::Done;
        Poll::Ready(CreditGuard {
            credits: this.credits.clone(),
            n: this.need,
        })
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => {}
            // Taken but never handed out: give them back.
            State::Ready => self.credits.release(self.need),
            State::Queued(w) if w.granted.get() => self.credits.release(self.need),
            State::Queued(w) => {
                let mut queue = self.credits.inner.queue.borrow_mut();
                let was_head = queue.front().is_some_and(|h| Rc::ptr_eq(h, &w));
                queue.retain(|q| !Rc::ptr_eq(q, &w));
                drop(queue);
                // The head blocked the ones behind it; they may fit now.
                if was_head {
                    self.credits.dispatch();
                }
            }
        }
    }
}

/// Credits held; given back on drop.
pub struct CreditGuard {
    credits: Credits,
    n: usize,
}

impl Drop for CreditGuard {
    fn drop(&mut self) {
        self.credits.release(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Acquire, flag: &Arc<Flag>) -> Option<CreditGuard> {
        let waker = Waker::from(Arc::clone(flag));
        let mut cx = Context::from_waker(&waker);
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(g) => Some(g),
            Poll::Pending => None,
        }
    }

    fn flag() -> Arc<Flag> {
        Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)))
    }

    fn woken(f: &Arc<Flag>) -> bool {
        f.0.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn fifo_order_and_head_of_line_fairness() {
        let c = Credits::new(3, 10);
        assert!(c.can_take_now(2) && c.can_take_now(30));
        let mut a = c.acquire(2).unwrap();
        let fa = flag();
        let ga = poll(&mut a, &fa).expect("free credits: immediate");
        // b needs 3 (all), c needs 1: c must not overtake b although 1 credit is free.
        let (fb, fc) = (flag(), flag());
        let mut b = c.acquire(3).unwrap();
        let mut cc = c.acquire(1).unwrap();
        assert!(poll(&mut b, &fb).is_none());
        assert!(poll(&mut cc, &fc).is_none());
        assert_eq!(c.waiting(), 2);
        assert!(!c.can_take_now(1), "1 credit free, but others wait first");
        drop(ga);
        assert!(woken(&fb) && !woken(&fc));
        let gb = poll(&mut b, &fb).expect("b granted");
        assert!(poll(&mut cc, &fc).is_none());
        drop(gb);
        assert!(woken(&fc));
        let gc = poll(&mut cc, &fc).expect("c granted");
        assert_eq!(c.available(), 2);
        drop(gc);
        assert_eq!(c.available(), 3);
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn requests_are_clamped_to_capacity() {
        let c = Credits::new(2, 10);
        let mut a = c.acquire(40).unwrap();
        let g = poll(&mut a, &flag()).expect("clamped to 2: fits");
        assert_eq!(c.available(), 0);
        drop(g);
        assert_eq!(c.available(), 2);
    }

    #[test]
    fn cancelled_waiters_leak_neither_credits_nor_wakeups() {
        let c = Credits::new(2, 10);
        let g = poll(&mut c.acquire(2).unwrap(), &flag()).unwrap();
        let (f1, f2, f3) = (flag(), flag(), flag());
        let mut w1 = c.acquire(2).unwrap();
        let mut w2 = c.acquire(1).unwrap();
        let mut w3 = c.acquire(1).unwrap();
        assert!(poll(&mut w1, &f1).is_none());
        assert!(poll(&mut w2, &f2).is_none());
        assert!(poll(&mut w3, &f3).is_none());
        // A waiter dropped in the middle leaves the queue.
        drop(w2);
        assert_eq!(c.waiting(), 2);
        // Grant to w1, then drop it before it is polled: its credits come back and go on to
        // w3 (the next in line), nothing leaks.
        drop(g);
        assert!(woken(&f1));
        drop(w1);
        assert!(woken(&f3));
        let g3 = poll(&mut w3, &f3).expect("w3 granted after w1 was dropped");
        assert_eq!(c.available(), 1);
        drop(g3);
        assert_eq!(c.available(), 2);
        assert_eq!(c.waiting(), 0);

        // Dropping the blocking head lets the waiters behind it proceed at once.
        let g = poll(&mut c.acquire(1).unwrap(), &flag()).unwrap();
        let (fh, fb) = (flag(), flag());
        let mut head = c.acquire(2).unwrap();
        let mut behind = c.acquire(1).unwrap();
        assert!(poll(&mut head, &fh).is_none());
        assert!(poll(&mut behind, &fb).is_none());
        drop(head);
        assert!(woken(&fb));
        let gb = poll(&mut behind, &fb).expect("granted once the head left");
        drop(gb);
        drop(g);
        assert_eq!(c.available(), 2);
        // An immediate grant that is never polled gives its credits back too.
        drop(c.acquire(2).unwrap());
        assert_eq!(c.available(), 2);
    }

    #[test]
    fn the_wait_queue_is_bounded() {
        let c = Credits::new(1, 2);
        let _g = poll(&mut c.acquire(1).unwrap(), &flag()).unwrap();
        let _w1 = c.acquire(1).unwrap();
        let _w2 = c.acquire(1).unwrap();
        assert_eq!(c.acquire(1).err(), Some(TooManyWaiters));
    }
}
