//! A filter of the message keys the journal's cold store may hold, so that `create` of a new
//! `transaction_id` (the common case) skips fjall's point read.
//!
//! # Why
//!
//! Every new id used to cost a fjall `get` that misses: a bloom probe per L0 table and per
//! level (standard, not blocked, filters: a few cache misses each). By profile that was only
//! ~0.8 µs per message, but skipping it saved 4–7 µs of gateway CPU per message in
//! `fsync = off` at max load (+13–21% throughput; `perf/RESULTS.md`, session 9): fjall's read
//! also evicted everyone else's cache lines. One blocked filter here is one cache line per
//! probe.
//!
//! # Shape
//!
//! A split-block bloom filter: 512-bit blocks; a key sets one bit in each of the block's eight
//! words. Two generations, each `bytes` long: keys are inserted into the current one; a probe
//! checks both. Generations are `generation_ms` long (the records' TTL): when the clock enters
//! a new generation the older one is cleared and becomes the current one. A key inserted at
//! time `t` is thus kept until at least `t + generation_ms`, i.e. for as long as a record
//! created at `t` is unexpired. Each journal stripe has its own filter, used under the
//! stripe's lock (no atomics, rotation needs no coordination).
//!
//! The filter never answers "absent" for a key inserted in the last `generation_ms` (tests
//! below). What keeps every unexpired cold key inserted is the journal's business (see
//! `journal.rs`, "Key filter").

/// Words per block: eight u64, one cache line.
const BLOCK_WORDS: usize = 8;

/// Two-generation split-block bloom filter of key hashes (see the module doc).
#[derive(Default)]
pub(super) struct KeyFilter {
    /// Current generation's blocks.
    cur: Box<[u64]>,
    /// The generation before.
    prev: Box<[u64]>,
    /// Generation number of `cur` (`now_ms / generation_ms`).
    generation: u64,
    generation_ms: u64,
}

/// splitmix64's finaliser: the journal's key hash also chooses the stripe (bits 32..) and the
/// slot, so the bits used here must not depend on those.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The words of hash `h`'s block in a filter of `words` words, and the eight single-bit masks
/// to test or set in them.
fn probe(h: u64, words: usize) -> (std::ops::Range<usize>, [u64; BLOCK_WORDS]) {
    let a = mix(h);
    // Multiply-shift maps the full 64 bits onto 0..blocks without a division.
    let block = ((u128::from(a) * (words / BLOCK_WORDS) as u128) >> 64) as usize;
    let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
    let mut masks = [0u64; BLOCK_WORDS];
    for (i, m) in masks.iter_mut().enumerate() {
        *m = 1u64 << ((b >> (i * 6)) & 63);
    }
    (block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS, masks)
}

fn contains(words: &[u64], h: u64) -> bool {
    let (block, masks) = probe(h, words.len());
    words[block].iter().zip(masks).all(|(w, m)| w & m != 0)
}

impl KeyFilter {
    /// A filter of `bytes` per generation (rounded down to whole 64-byte blocks; below one
    /// block the filter is disabled and answers "maybe" to everything).
    pub(super) fn new(bytes: usize, generation_ms: u64, now_ms: u64) -> KeyFilter {
        let words = bytes / (8 * BLOCK_WORDS) * BLOCK_WORDS;
        if words == 0 {
            return KeyFilter::default();
        }
        let generation_ms = generation_ms.max(1);
        KeyFilter {
            cur: vec![0; words].into_boxed_slice(),
            prev: vec![0; words].into_boxed_slice(),
            generation: now_ms / generation_ms,
            generation_ms,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.cur.is_empty()
    }

    /// Moves to the generation of `now_ms` if the clock has left the current one (on insert
    /// only: every stripe sees inserts as long as new ids arrive). A clock
    /// that went back keeps the current generation (keys then stay longer, never shorter).
    fn rotate(&mut self, now_ms: u64) {
        let g = now_ms / self.generation_ms;
        if g <= self.generation {
            return;
        }
        if g == self.generation + 1 {
            std::mem::swap(&mut self.cur, &mut self.prev);
            self.cur.fill(0);
        } else {
            self.cur.fill(0);
            self.prev.fill(0);
        }
        self.generation = g;
    }

    /// Records the key of hash `h` at `now_ms`.
    pub(super) fn insert(&mut self, h: u64, now_ms: u64) {
        if !self.enabled() {
            return;
        }
        self.rotate(now_ms);
        let (block, masks) = probe(h, self.cur.len());
        for (w, m) in self.cur[block].iter_mut().zip(masks) {
            *w |= m;
        }
    }

    /// False only if no key of hash `h` was inserted in the last `generation_ms`; true for a
    /// disabled filter. It does not rotate: a filter not rotated yet only holds keys longer.
    pub(super) fn may_contain(&self, h: u64) -> bool {
        if !self.enabled() {
            return true;
        }
        contains(&self.cur, h) || contains(&self.prev, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn hashes(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        (0..n as u64).map(move |i| mix(seed ^ mix(i)))
    }

    #[test]
    fn an_inserted_key_is_found_for_a_whole_generation_and_cleared_after_two() {
        let t0 = 1_000 * HOUR + HOUR / 2; // the middle of a generation
        let mut f = KeyFilter::new(64 * 1024, HOUR, t0);
        for h in hashes(1, 20_000) {
            f.insert(h, t0);
        }
        // Still there at the end of the next generation (one full generation after t0 and
        // then some), the clock moved on by inserts of other keys.
        for now in [t0, t0 + HOUR / 2, t0 + HOUR, t0 + 3 * HOUR / 2 - 1] {
            f.insert(7, now);
            assert!(hashes(1, 20_000).all(|h| f.may_contain(h)), "at {now}");
        }
        // Two generations on, the keys are gone (all but false positives).
        f.insert(7, t0 + 2 * HOUR);
        let left = hashes(1, 20_000).filter(|&h| f.may_contain(h)).count();
        assert_eq!(left, 0, "cleared after two rotations");
    }

    #[test]
    fn a_jump_of_several_generations_clears_both_and_a_clock_going_back_keeps_them() {
        let t0 = 10 * HOUR;
        let mut f = KeyFilter::new(4096, HOUR, t0);
        f.insert(42, t0);
        // Back in time: no rotation, the key stays.
        f.insert(1, t0 - 5 * HOUR);
        assert!(f.may_contain(42));
        f.insert(1, t0 + HOUR);
        assert!(f.may_contain(42));
        f.insert(1, t0 + 5 * HOUR);
        assert!(!f.may_contain(42));
    }

    #[test]
    fn false_positives_stay_low_at_ten_bits_per_key() {
        let t0 = 5 * HOUR;
        let bytes = 128 * 1024; // 1 Mi bits
        let mut f = KeyFilter::new(bytes, HOUR, t0);
        let n = bytes * 8 / 10;
        for h in hashes(7, n) {
            f.insert(h, t0);
        }
        let probes = 100_000;
        let fp = hashes(8, probes).filter(|&h| f.may_contain(h)).count();
        let rate = fp as f64 / probes as f64;
        // Split-block filters at 10 bits per key measure ~1-2%.
        assert!(rate < 0.03, "false positive rate {rate}");
        assert!(rate > 0.0, "a filter this full has some false positives");
    }

    #[test]
    fn a_disabled_filter_says_maybe() {
        let mut f = KeyFilter::new(63, HOUR, 0);
        assert!(!f.enabled());
        f.insert(1, 0);
        assert!(f.may_contain(2));
    }
}
