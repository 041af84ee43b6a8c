//! The blacklist: an immutable set of E.164 keys, compact and fast, rebuilt and swapped whole.
//!
//! Layout: every key is scrambled by a bijective mixer (so the values spread evenly even though
//! phone numbers cluster by country and operator), the scrambled values are sorted, and a radix
//! index over their top `bits` bits gives each value's bucket: `index[b]..index[b + 1]`. A lookup
//! is one index read plus a short scan of a bucket of about 4 values that usually shares one
//! cache line: two cache misses, where a binary search over 10M values would take ~23 dependent
//! ones. Memory: 8 bytes per number plus 4 bytes per bucket (about 1 per 4 numbers), i.e.
//! ~9 bytes per number: 10M numbers ≈ 88 MiB. The mixer is invertible, so there are no false
//! positives: a value is found only if its number was loaded.

use super::number::{Normalizer, NumberError};

/// An immutable set of numbers (E.164 keys).
#[derive(Debug, Default)]
pub struct Blacklist {
    /// Mixed keys, sorted, no duplicates.
    values: Vec<u64>,
    /// `index[b]` = first position of bucket `b`; `len = buckets + 1`.
    index: Vec<u32>,
    /// Bucket = value >> shift (64 - bits).
    shift: u32,
}

/// Invertible 64-bit mixer (the finaliser of SplitMix64: xor-shifts and odd multiplications
/// are each bijections), so distinct numbers stay distinct.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Blacklist {
    /// Builds the set from keys in any order (duplicates allowed).
    pub fn from_keys(mut keys: Vec<u64>) -> Blacklist {
        for k in keys.iter_mut() {
            *k = mix(*k);
        }
        keys.sort_unstable();
        keys.dedup();
        keys.shrink_to_fit();
        // About 4 values per bucket; at least 1 bit so the shift stays < 64. The index is u32,
        // so more than 4G numbers are refused by `u32::try_from` below.
        let n = keys.len().max(1);
        let bits = (usize::BITS - (n / 4).max(1).leading_zeros()).clamp(1, 30);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for b in 0..buckets as u64 {
            while pos < keys.len() && (keys[pos] >> shift) < b {
                pos += 1;
            }
            index.push(u32::try_from(pos).unwrap_or(u32::MAX));
        }
        index.push(u32::try_from(keys.len()).unwrap_or(u32::MAX));
        Blacklist {
            values: keys,
            index,
            shift,
        }
    }

    #[inline]
    pub fn contains(&self, key: u64) -> bool {
        if self.values.is_empty() {
            return false;
        }
        let v = mix(key);
        let b = (v >> self.shift) as usize;
        // In bounds: b < 2^bits and index has 2^bits + 1 entries.
        let lo = self.index[b] as usize;
        let hi = self.index[b + 1] as usize;
        self.values[lo..hi].contains(&v)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Heap bytes held (values + index).
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * 8 + self.index.capacity() * 4
    }
}

/// The outcome of parsing one CSV file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub keys: Vec<u64>,
    /// Non-empty, non-comment lines that are not a number (the first one may be a header).
    pub rejected: usize,
    /// The first rejected line (1-based) and why, for the log.
    pub first_error: Option<(usize, String)>,
}

/// Parses a blacklist CSV: one number per line, or the number in the first column (`,` or `;`
/// separated, optionally in double quotes). Blank lines and lines starting with `#` are
/// skipped; a first line that is not a number is taken as a header. Bad lines are counted,
/// not fatal: one typo must not drop a whole list. Callers decide what ratio is too many.
pub fn parse_csv(text: &str, normalizer: &Normalizer) -> Parsed {
    let mut out = Parsed::default();
    let mut seen_data = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split([',', ';']).next().unwrap_or("").trim();
        let first = first.trim_matches('"').trim();
        match normalizer.to_key(first) {
            Ok(k) => {
                out.keys.push(k);
                seen_data = true;
            }
            Err(e) => {
                let header = !seen_data && out.rejected == 0 && looks_like_header(first, &e);
                if !header {
                    out.rejected += 1;
                    if out.first_error.is_none() {
                        out.first_error = Some((i + 1, e.to_string()));
                    }
                }
                seen_data = true;
            }
        }
    }
    out
}

fn looks_like_header(field: &str, e: &NumberError) -> bool {
    matches!(e, NumberError::BadChar(_)) && field.chars().any(|c| c.is_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_contains_exactly_what_was_loaded() {
        let mut rng = fastrand::Rng::with_seed(7);
        let keys: Vec<u64> = (0..100_000)
            .map(|_| rng.u64(10_000_000_000..1_000_000_000_000_000))
            .collect();
        let set = Blacklist::from_keys(keys.clone());
        let loaded: std::collections::HashSet<u64> = keys.iter().copied().collect();
        for &k in &keys {
            assert!(set.contains(k));
        }
        let mut false_hits = 0;
        for _ in 0..100_000 {
            let k = rng.u64(10_000_000_000..1_000_000_000_000_000);
            if set.contains(k) != loaded.contains(&k) {
                false_hits += 1;
            }
            if false_hits > 0 {
                break;
            }
        }
        assert_eq!(false_hits, 0);
        // Neighbours of loaded numbers are not in the set.
        assert!(!set.contains(keys[0] + 1) || loaded.contains(&(keys[0] + 1)));
        assert!(
            set.heap_bytes() <= keys.len() * 10 + 1024,
            "{}",
            set.heap_bytes()
        );
    }

    #[test]
    fn empty_and_tiny_sets() {
        assert!(!Blacklist::from_keys(vec![]).contains(0));
        let s = Blacklist::from_keys(vec![5, 5, u64::MAX, 0]);
        assert_eq!(s.len(), 3);
        assert!(s.contains(5) && s.contains(u64::MAX) && s.contains(0));
        assert!(!s.contains(6));
    }

    #[test]
    fn csv_with_header_comments_columns_and_junk() {
        let text = "\u{feff}phone,reason\n# opted out\n+49 151 1111111,stop\n\n\"0049 151 2222222\";x\n+33 6 12 34 56 78\nnot-a-number\n+1\n";
        let p = parse_csv(text, &Normalizer::default());
        assert_eq!(p.keys, vec![491511111111, 491512222222, 33612345678]);
        assert_eq!(p.rejected, 2);
        assert_eq!(p.first_error.as_ref().map(|e| e.0), Some(7));
    }
}
