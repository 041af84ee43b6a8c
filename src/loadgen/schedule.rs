//! The open-loop send schedule: which request a connection sends next and when it is due.
//!
//! Pure arithmetic, no clock: the caller passes elapsed time. The whole run is one uniform
//! sequence of global slots `g = 0, 1, 2, ...`, slot `g` due `g / rate` seconds after the start.
//! Connection `k` of `C` owns the slots `k, k + C, k + 2C, ...`, so the union over all
//! connections is exactly the uniform schedule, with no drift from per-connection rounding.
//! Latency is measured from a slot's due time, never from when it was actually written, so a
//! stalled server (or a stalled client) shows up as latency instead of as fewer samples.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Open loop: `rate_per_s` requests per second in total, due times fixed in advance.
    Rate { rate_per_s: u64 },
    /// Closed loop: every connection keeps its pipeline full; latency is measured from the
    /// actual send time because there is no schedule to fall behind.
    Max,
}

/// Number of slots in the whole run: every slot due strictly before `duration`, at most
/// `requests_cap`.
pub fn total_slots(pace: Pace, duration: Duration, requests_cap: Option<u64>) -> u64 {
    let cap = requests_cap.unwrap_or(u64::MAX);
    match pace {
        Pace::Rate { rate_per_s } => {
            // Slot g is due at g * 1e9 / rate ns; it is inside the run when g * 1e9 < d * rate.
            let scaled = duration.as_nanos() * u128::from(rate_per_s);
            let slots = scaled.div_ceil(NANOS_PER_SEC);
            u64::try_from(slots).unwrap_or(u64::MAX).min(cap)
        }
        // Closed loop ends on the clock; the count is only bounded by the cap.
        Pace::Max => cap,
    }
}

/// Due time of global slot `g`, as an offset from the run start.
pub fn due_offset(g: u64, rate_per_s: u64) -> Duration {
    debug_assert!(rate_per_s > 0, "rate validated non-zero");
    let ns = u128::from(g) * NANOS_PER_SEC / u128::from(rate_per_s.max(1));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The slots of one connection, in order.
#[derive(Debug, Clone)]
pub struct ConnSchedule {
    next_slot: u64,
    stride: u64,
    total_slots: u64,
}

impl ConnSchedule {
    /// Slots of connection `conn_index` out of `connections`, over a run of `total_slots`.
    pub fn new(conn_index: u64, connections: u64, total_slots: u64) -> Self {
        debug_assert!(conn_index < connections, "conn index within connections");
        Self {
            next_slot: conn_index,
            stride: connections.max(1),
            total_slots,
        }
    }

    /// The next slot this connection owns, if any is left.
    pub fn peek(&self) -> Option<u64> {
        (self.next_slot < self.total_slots).then_some(self.next_slot)
    }

    /// Consume the slot returned by `peek`.
    pub fn advance(&mut self) {
        self.next_slot = self.next_slot.saturating_add(self.stride);
    }

    /// Slots not yet consumed (used to count requests that could never be sent).
    pub fn remaining(&self) -> u64 {
        if self.next_slot >= self.total_slots {
            0
        } else {
            (self.total_slots - self.next_slot).div_ceil(self.stride)
        }
    }

    /// Give up on every remaining slot and return how many there were.
    pub fn abandon(&mut self) -> u64 {
        let left = self.remaining();
        self.next_slot = self.total_slots;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_slots_cover_exactly_the_duration() {
        let one_s = Duration::from_secs(1);
        assert_eq!(
            total_slots(Pace::Rate { rate_per_s: 2000 }, one_s, None),
            2000
        );
        assert_eq!(total_slots(Pace::Rate { rate_per_s: 3 }, one_s, None), 3);
        // 1.5 s at 3/s: slots at 0, .333, .667, 1.0, 1.333 -> 5 slots before 1.5 s.
        let d = Duration::from_millis(1500);
        assert_eq!(total_slots(Pace::Rate { rate_per_s: 3 }, d, None), 5);
        assert_eq!(
            total_slots(Pace::Rate { rate_per_s: 2000 }, one_s, Some(10)),
            10
        );
        assert_eq!(total_slots(Pace::Max, one_s, Some(7)), 7);
        assert_eq!(total_slots(Pace::Max, one_s, None), u64::MAX);
    }

    #[test]
    fn due_offsets_are_uniform_without_drift() {
        assert_eq!(due_offset(0, 3), Duration::ZERO);
        assert_eq!(due_offset(3, 3), Duration::from_secs(1));
        assert_eq!(due_offset(3_000_000, 3), Duration::from_secs(1_000_000));
        assert_eq!(due_offset(1, 2000), Duration::from_micros(500));
    }

    #[test]
    fn connections_partition_the_slots() {
        let total = 103;
        let connections = 4;
        let mut seen = vec![false; total as usize];
        let mut counted = 0;
        for k in 0..connections {
            let mut s = ConnSchedule::new(k, connections, total);
            counted += s.remaining();
            let mut last = None;
            while let Some(g) = s.peek() {
                assert!(!seen[g as usize], "slot {g} owned twice");
                seen[g as usize] = true;
                assert!(last.is_none_or(|l| l < g), "slots in order");
                last = Some(g);
                s.advance();
            }
            assert_eq!(s.remaining(), 0);
        }
        assert!(seen.iter().all(|s| *s), "every slot owned once");
        assert_eq!(counted, total);
    }

    #[test]
    fn abandon_counts_what_was_left() {
        let mut s = ConnSchedule::new(1, 2, 10); // slots 1,3,5,7,9
        s.advance();
        assert_eq!(s.abandon(), 4);
        assert_eq!(s.peek(), None);
        assert_eq!(s.abandon(), 0);
        // More connections than slots: some connections own nothing.
        assert_eq!(ConnSchedule::new(5, 8, 3).remaining(), 0);
    }
}
