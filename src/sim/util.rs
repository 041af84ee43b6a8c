//! Small pieces the simulator needs: a cross-thread wake-up signal, message-id formatting
//! without allocation, and the `YYMMDDhhmm` receipt date.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::config::IdFormat;

/// Locks a mutex, ignoring poisoning: the data behind our mutexes (counters, queues) stays
/// consistent even if a holder panicked, and the simulator must keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A level-triggered wake-up for one waiting task, usable from any thread (receipts are
/// handed to sessions that may live on another event loop). Notifications coalesce.
#[derive(Default)]
pub(crate) struct Signal {
    pending: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        let w = lock(&self.waker).take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Completes once `notify` was called after the previous `wait` completed.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self }
    }
}

pub(crate) struct SignalWait<'a> {
    signal: &'a Signal,
}

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = self.signal;
        if s.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        *lock(&s.waker) = Some(cx.waker().clone());
        // A notify between the swap and storing the waker would otherwise be missed.
        if s.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Longest id text: a u64 is at most 20 decimal digits; padding is capped at 32.
pub(crate) const ID_BUF_LEN: usize = 32;

/// Writes `n` in `fmt`, zero-padded to `width`, into `buf`; returns the used tail of `buf`.
pub(crate) fn format_id(n: u64, fmt: IdFormat, width: u8, buf: &mut [u8; ID_BUF_LEN]) -> &[u8] {
    let mut pos = ID_BUF_LEN;
    match fmt {
        IdFormat::Dec => {
            let mut it = itoa::Buffer::new();
            let s = it.format(n).as_bytes();
            pos -= s.len();
            buf[pos..].copy_from_slice(s);
        }
        IdFormat::Hex | IdFormat::HexUpper => {
            let digits: &[u8; 16] = if fmt == IdFormat::Hex {
                b"0123456789abcdef"
            } else {
                b"0123456789ABCDEF"
            };
            let mut v = n;
            loop {
                pos -= 1;
                buf[pos] = digits[(v & 0xF) as usize];
                v >>= 4;
                if v == 0 {
                    break;
                }
            }
        }
    }
    let width = usize::from(width).min(ID_BUF_LEN);
    while ID_BUF_LEN - pos < width {
        pos -= 1;
        buf[pos] = b'0';
    }
    &buf[pos..]
}

/// `YYMMDDhhmm` (UTC) for the receipt's `submit date:` / `done date:`.
pub(crate) fn receipt_date(unix_secs: u64) -> [u8; 10] {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm) = (rem / 3600, (rem % 3600) / 60);
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let mut out = [0u8; 10];
    out[0..2].copy_from_slice(&two((y.rem_euclid(100)) as u64));
    out[2..4].copy_from_slice(&two(m as u64));
    out[4..6].copy_from_slice(&two(d as u64));
    out[6..8].copy_from_slice(&two(hh));
    out[8..10].copy_from_slice(&two(mm));
    out
}

/// Proleptic Gregorian date from days since 1970-01-01 (the well-known "days to civil"
/// computation over 400-year eras).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_every_format() {
        let mut b = [0u8; ID_BUF_LEN];
        assert_eq!(format_id(0, IdFormat::Dec, 0, &mut b), b"0");
        assert_eq!(format_id(6699, IdFormat::Dec, 0, &mut b), b"6699");
        assert_eq!(format_id(6699, IdFormat::Hex, 0, &mut b), b"1a2b");
        assert_eq!(format_id(6699, IdFormat::HexUpper, 8, &mut b), b"00001A2B");
        assert_eq!(
            format_id(u64::MAX, IdFormat::Dec, 0, &mut b),
            b"18446744073709551615"
        );
        assert_eq!(format_id(1, IdFormat::Dec, 200, &mut b).len(), ID_BUF_LEN);
    }

    #[test]
    fn receipt_dates() {
        assert_eq!(&receipt_date(0), b"7001010000");
        // 2024-02-29 23:59:59 UTC
        assert_eq!(&receipt_date(1_709_251_199), b"2402292359");
        // 2026-11-25 23:40:04 UTC
        assert_eq!(&receipt_date(1_795_650_004), b"2611252340");
    }
}
