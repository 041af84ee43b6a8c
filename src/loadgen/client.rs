//! The load generator's data plane: one monoio runtime per thread, each driving its share of
//! the keep-alive connections. A connection is two tasks over the split socket: a writer that
//! sends every request when its slot is due (batching all due requests into one write, at
//! most `pipeline` outstanding), and a reader that frames responses and records latency from
//! the slot's due time. They share a FIFO of due times, so a response is matched to its
//! request by order, as HTTP/1.1 pipelining requires.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use super::LoadgenError;
use super::http::{self, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use super::pacer::{Pacer, PacerHandle};
use super::payload::RequestTemplate;
use super::report::Stats;
use super::schedule::{ConnSchedule, Pace, due_offset};

/// Initial read buffer per connection; grows (bounded by one maximal response) only for
/// responses that do not fit.
const READ_BUF_BYTES: usize = 16 * 1024;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Everything the threads share, read-only.
#[derive(Debug)]
pub struct RunPlan {
    pub target: SocketAddr,
    pub pace: Pace,
    pub total_slots: u64,
    pub connections: u64,
    pub pipeline: usize,
    /// Scheduling stops this long after the start.
    pub send_window: Duration,
    /// Responses are awaited this long after the send window.
    pub drain: Duration,
    pub connect_timeout: Duration,
    /// Wake writers with the precise pacer thread instead of the 1 ms timer wheel.
    pub precise_timer: bool,
    pub template: RequestTemplate,
    /// Schedule origin, shared by all threads.
    pub start: Instant,
}

impl RunPlan {
    fn send_deadline(&self) -> Instant {
        self.start + self.send_window
    }

    fn drain_deadline(&self) -> Instant {
        self.send_deadline() + self.drain
    }
}

/// Counters for the live progress line, one block per thread on its own cache lines so the
/// threads never contend.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LiveCounters {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
}

/// Result of one load-generator thread.
#[derive(Debug)]
pub struct ThreadResult {
    pub stats: Stats,
    /// Send lag: how late requests were written compared with their due time (client-side
    /// delay, included in the latency figures).
    pub send_lag_ns: hdrhistogram::Histogram<u64>,
    pub driver: &'static str,
}

/// A single-threaded, single-waiter wake-up flag (the two tasks of a connection live on one
/// runtime thread, so `Cell` suffices).
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Wait for the signal or the deadline, whichever comes first: on the pacer thread when
    /// there is one (sub-millisecond), else on monoio's millisecond timer wheel.
    async fn wait_until(&self, deadline: Instant, pacer: Option<(&PacerHandle, usize)>) {
        let Some((pacer, slot)) = pacer else {
            self.wait_until_coarse(deadline).await;
            return;
        };
        poll_fn(|cx| {
            if self.set.replace(false) {
                pacer.cancel(slot);
                Poll::Ready(())
            } else if Instant::now() >= deadline {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                pacer.register(slot, deadline, cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// Sleep on the timer wheel until `deadline`; true when the signal ended the wait.
    async fn wait_until_coarse(&self, deadline: Instant) -> bool {
        let mut sleep = pin!(monoio::time::sleep_until(monoio::time::Instant::from_std(
            deadline
        )));
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(true)
            } else if sleep.as_mut().poll(cx).is_ready() {
                Poll::Ready(false)
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// State shared by the writer and reader of one TCP connection.
struct Session {
    /// Due times of requests written and not yet answered, oldest first; at most `pipeline`.
    inflight: RefCell<VecDeque<Instant>>,
    writer_done: Cell<bool>,
    broken: Cell<bool>,
    /// Responses were received on this connection (used to decide on reconnect backoff).
    answered: Cell<bool>,
    to_writer: Signal,
    to_reader: Signal,
}

impl Session {
    fn new(pipeline: usize) -> Self {
        Self {
            inflight: RefCell::new(VecDeque::with_capacity(pipeline)),
            writer_done: Cell::new(false),
            broken: Cell::new(false),
            answered: Cell::new(false),
            to_writer: Signal::default(),
            to_reader: Signal::default(),
        }
    }

    fn break_with(&self, stats: &RefCell<Stats>, why: &str) {
        if !self.broken.replace(true) {
            stats.borrow_mut().record_error_kind(why);
        }
        self.to_reader.notify();
        self.to_writer.notify();
    }
}

struct ThreadCtx {
    plan: Arc<RunPlan>,
    stats: RefCell<Stats>,
    send_lag_ns: RefCell<hdrhistogram::Histogram<u64>>,
    live: Arc<LiveCounters>,
    pacer: Option<PacerHandle>,
}

/// Run this thread's connections (indexes `thread_index, thread_index + threads, ...`) to the
/// end of the plan. Blocks the calling thread.
pub fn run_thread(
    plan: Arc<RunPlan>,
    thread_index: usize,
    threads: usize,
    live: Arc<LiveCounters>,
) -> Result<ThreadResult, LoadgenError> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(LoadgenError::Runtime)?;
    let my_connections = (thread_index as u64..plan.connections)
        .step_by(threads.max(1))
        .count();
    // Declared before the runtime future so it outlives every task that holds a handle; its
    // drop stops and joins the helper thread.
    let pacer = match (plan.precise_timer, plan.pace) {
        (true, Pace::Rate { .. }) => Some(
            Pacer::start(my_connections, format!("bench-pacer-{thread_index}"))
                .map_err(LoadgenError::Io)?,
        ),
        _ => None,
    };
    let pacer_handle = pacer.as_ref().map(Pacer::handle);
    runtime.block_on(async move {
        let driver = if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "io_uring"
        };
        let connections = plan.connections;
        let ctx = Rc::new(ThreadCtx {
            plan,
            stats: RefCell::new(Stats::new()),
            send_lag_ns: RefCell::new(Stats::new().latency_ns),
            live,
            pacer: pacer_handle,
        });
        let mut tasks = Vec::new();
        for (local, k) in (thread_index as u64..connections)
            .step_by(threads.max(1))
            .enumerate()
        {
            tasks.push(monoio::spawn(run_connection(ctx.clone(), k, local)));
        }
        for t in tasks {
            t.await;
        }
        let ctx =
            Rc::try_unwrap(ctx).map_err(|_| LoadgenError::Internal("tasks still hold state"))?;
        Ok(ThreadResult {
            stats: ctx.stats.into_inner(),
            send_lag_ns: ctx.send_lag_ns.into_inner(),
            driver,
        })
    })
}

async fn run_connection(ctx: Rc<ThreadCtx>, conn_index: u64, local_index: usize) {
    let plan = &ctx.plan;
    let mut schedule = ConnSchedule::new(conn_index, plan.connections, plan.total_slots);
    let last_send = match plan.pace {
        // Late slots may still go out until the drain deadline: a slow server then shows as
        // latency, not as requests silently skipped.
        Pace::Rate { .. } => plan.drain_deadline(),
        Pace::Max => plan.send_deadline(),
    };
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut waited_for_start = false;
    while schedule.peek().is_some() && Instant::now() < last_send {
        let connect =
            monoio::time::timeout(plan.connect_timeout, TcpStream::connect_addr(plan.target)).await;
        let stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                connect_failed(
                    &ctx,
                    &format!("connect: {}", e.kind()),
                    &mut backoff,
                    last_send,
                )
                .await;
                continue;
            }
            Err(_) => {
                connect_failed(&ctx, "connect: timed out", &mut backoff, last_send).await;
                continue;
            }
        };
        // Latency is what matters, not small-packet batching by the kernel.
        let _ = stream.set_nodelay(true);
        // Open loop waits for each slot's due time anyway; closed loop starts together.
        if !waited_for_start && plan.pace == Pace::Max {
            waited_for_start = true;
            monoio::time::sleep_until(monoio::time::Instant::from_std(plan.start)).await;
        }
        let session = Rc::new(Session::new(plan.pipeline));
        let (read_half, write_half) = stream.into_split();
        let reader = monoio::spawn(read_responses(ctx.clone(), session.clone(), read_half));
        write_requests(
            &ctx,
            &session,
            write_half,
            &mut schedule,
            last_send,
            local_index,
        )
        .await;
        reader.await;

        // Counted in messages: a lost batch request loses all of its messages.
        let lost = session.inflight.borrow().len() as u64 * plan.template.messages_per_request();
        if lost > 0 {
            let mut stats = ctx.stats.borrow_mut();
            if Instant::now() >= plan.drain_deadline() {
                stats.timeouts += lost;
            } else {
                stats.transport_errors += lost;
            }
            ctx.live.errors.fetch_add(lost, Ordering::Relaxed);
        }
        if session.answered.get() {
            backoff = RECONNECT_BACKOFF_MIN;
        } else if session.broken.get() {
            sleep_backoff(&mut backoff, last_send).await;
        }
    }
    if matches!(plan.pace, Pace::Rate { .. }) {
        let unsent = schedule.abandon() * plan.template.messages_per_request();
        if unsent > 0 {
            ctx.stats.borrow_mut().unsent += unsent;
            ctx.live.errors.fetch_add(unsent, Ordering::Relaxed);
        }
    }
}

async fn connect_failed(ctx: &ThreadCtx, why: &str, backoff: &mut Duration, until: Instant) {
    {
        let mut stats = ctx.stats.borrow_mut();
        stats.connect_errors += 1;
        stats.record_error_kind(why);
    }
    sleep_backoff(backoff, until).await;
}

async fn sleep_backoff(backoff: &mut Duration, until: Instant) {
    let wake = (Instant::now() + *backoff).min(until);
    monoio::time::sleep_until(monoio::time::Instant::from_std(wake)).await;
    *backoff = (*backoff * 2).min(RECONNECT_BACKOFF_MAX);
}

async fn write_requests<W: AsyncWriteRentExt>(
    ctx: &ThreadCtx,
    session: &Session,
    mut writer: W,
    schedule: &mut ConnSchedule,
    last_send: Instant,
    local_index: usize,
) {
    let plan = &ctx.plan;
    let pacer = ctx.pacer.as_ref().map(|p| (p, local_index));
    let mut wbuf: Vec<u8> = Vec::with_capacity(plan.pipeline.min(64) * 1024);
    let mut scratch: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if session.broken.get() {
            break;
        }
        let now = Instant::now();
        if now >= last_send {
            break;
        }
        let mut queued = 0u64;
        {
            let mut inflight = session.inflight.borrow_mut();
            let mut lag = ctx.send_lag_ns.borrow_mut();
            while inflight.len() < plan.pipeline {
                let Some(g) = schedule.peek() else { break };
                let due = match plan.pace {
                    Pace::Rate { rate_per_s } => plan.start + due_offset(g, rate_per_s),
                    Pace::Max => now,
                };
                if due > now {
                    break;
                }
                let lag_ns = u64::try_from((now - due).as_nanos()).unwrap_or(u64::MAX);
                lag.saturating_record(lag_ns.max(1));
                plan.template.encode(g, &mut wbuf, &mut scratch);
                inflight.push_back(due);
                schedule.advance();
                queued += 1;
            }
        }
        if queued > 0 {
            // Wake the reader first: the responses may start arriving during the write.
            session.to_reader.notify();
            let (result, buf) = writer.write_all(wbuf).await;
            wbuf = buf;
            wbuf.clear();
            // `sent` counts messages (a batch request carries several).
            let messages = queued * plan.template.messages_per_request();
            ctx.stats.borrow_mut().sent += messages;
            ctx.live.sent.fetch_add(messages, Ordering::Relaxed);
            if let Err(e) = result {
                session.break_with(&ctx.stats, &format!("write: {}", e.kind()));
                break;
            }
        }
        let Some(next) = schedule.peek() else { break };
        if session.inflight.borrow().len() >= plan.pipeline {
            session.to_writer.wait().await;
        } else if let Pace::Rate { rate_per_s } = plan.pace {
            let due = plan.start + due_offset(next, rate_per_s);
            session
                .to_writer
                .wait_until(due.min(last_send), pacer)
                .await;
        }
    }
    session.writer_done.set(true);
    session.to_reader.notify();
}

async fn read_responses<R: AsyncReadRent>(ctx: Rc<ThreadCtx>, session: Rc<Session>, mut reader: R) {
    let drain_deadline = monoio::time::Instant::from_std(ctx.plan.drain_deadline());
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUF_BYTES);
    loop {
        if session.broken.get() {
            break;
        }
        if session.inflight.borrow().is_empty() {
            if session.writer_done.get() {
                break;
            }
            session.to_reader.wait().await;
            continue;
        }
        if rbuf.len() == rbuf.capacity() {
            if rbuf.capacity() >= MAX_HEAD_BYTES + MAX_BODY_BYTES {
                session.break_with(&ctx.stats, "response larger than the read bound");
                break;
            }
            rbuf.reserve(rbuf.capacity());
        }
        let (len, cap) = (rbuf.len(), rbuf.capacity());
        let read = monoio::time::timeout_at(drain_deadline, reader.read(rbuf.slice_mut(len..cap)));
        match read.await {
            // Past the drain deadline: what is still in flight counts as timed out.
            Err(_) => {
                session.broken.set(true);
                session.to_writer.notify();
                return;
            }
            Ok((result, slice)) => {
                rbuf = slice.into_inner();
                match result {
                    Ok(0) => {
                        session.break_with(&ctx.stats, "connection closed by server");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        session.break_with(&ctx.stats, &format!("read: {}", e.kind()));
                        break;
                    }
                }
            }
        }
        if !handle_responses(&ctx, &session, &mut rbuf) {
            break;
        }
        session.to_writer.notify();
    }
}

/// Frame and account every complete response in `rbuf`; false when the connection must end.
fn handle_responses(ctx: &ThreadCtx, session: &Session, rbuf: &mut Vec<u8>) -> bool {
    let now = Instant::now();
    let mut consumed = 0;
    let mut failure: Option<String> = None;
    let (mut answered, mut accepted, mut errors) = (0u64, 0u64, 0u64);
    {
        let mut stats = ctx.stats.borrow_mut();
        let mut inflight = session.inflight.borrow_mut();
        loop {
            let resp = match http::parse_response(&rbuf[consumed..]) {
                Ok(None) => break,
                Ok(Some(resp)) => resp,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            let Some(due) = inflight.pop_front() else {
                failure = Some("response without a request".to_owned());
                break;
            };
            stats.record_latency(now.saturating_duration_since(due));
            if ctx.plan.template.is_batch() {
                // One result per message; a refused envelope or missing results count as
                // rejections of the messages they stand for.
                let n = ctx.plan.template.messages_per_request();
                answered += n;
                let mut seen = 0;
                if (200..300).contains(&resp.status) {
                    let mut ok_items = 0;
                    seen = http::for_each_batch_item(resp.body, |ok, code| {
                        if ok {
                            ok_items += 1;
                        } else {
                            errors += 1;
                            stats.record_rejection(resp.status, code);
                        }
                    });
                    stats.accepted += ok_items;
                    accepted += ok_items;
                }
                if seen < n {
                    let code = http::body_error_code(resp.body).unwrap_or(b"(missing result)");
                    stats.record_rejections(resp.status, code, n - seen);
                    errors += n - seen;
                }
            } else if (200..300).contains(&resp.status) && http::body_says_success(resp.body) {
                stats.accepted += 1;
                accepted += 1;
            } else {
                errors += 1;
                let code = http::body_error_code(resp.body).unwrap_or(b"");
                stats.record_rejection(resp.status, code);
            }
            consumed += resp.len;
            if resp.close {
                failure = Some("server sent Connection: close".to_owned());
                break;
            }
        }
        if answered > 0 {
            let since_start = now.saturating_duration_since(ctx.plan.start);
            stats.last_response = stats.last_response.max(since_start);
        }
    }
    if answered > 0 {
        session.answered.set(true);
    }
    ctx.live.answered.fetch_add(answered, Ordering::Relaxed);
    ctx.live.accepted.fetch_add(accepted, Ordering::Relaxed);
    ctx.live.errors.fetch_add(errors, Ordering::Relaxed);
    rbuf.drain(..consumed);
    match failure {
        Some(why) => {
            session.break_with(&ctx.stats, &why);
            false
        }
        None => true,
    }
}
