//! Splitting a text into SMPP parts (submit_sm PDUs).
//!
//! Per link one of four modes ([`SegmentMode`]):
//! - `Udh8`: concatenation UDH with IEI 0x00 (8-bit reference) in `short_message`, esm_class
//!   UDHI (0x40); 153 septets / 134 octets / 67 UTF-16 units per part.
//! - `Udh16`: IEI 0x08 (16-bit reference); 152 / 133 / 66 per part.
//! - `Sar`: no UDH; the SAR TLVs sar_msg_ref_num / sar_total_segments / sar_segment_seqnum,
//!   and the SMSC builds the UDH; 153 / 134 / 67 per part (so the SMSC's 8-bit UDH fits).
//! - `MessagePayload`: the whole text in one message_payload TLV (sm_length 0), bounded by
//!   `max_payload_octets`.
//!
//! In every mode a text that fits one part (160 septets / 140 octets / 70 units) goes as one
//! plain `short_message` without UDH or TLVs: that is what every SMSC understands, and it keeps
//! part counting identical across modes for short texts.
//!
//! Parts are cut greedily on character boundaries, so an ESC pair (GSM7) or a surrogate pair
//! (UCS2) is never split; a part then carries one unit less than its capacity.
//! `text::check_text_len` and [`segment`] run the same splitter, so they cannot disagree.

use std::num::NonZeroU8;

use super::pdu::{SubmitSm, Tlvs, tag};
use super::text::{self, Encoding, TextError, TextInfo};

/// esm_class bit: `short_message` starts with a user data header.
pub const ESM_CLASS_UDHI: u8 = 0x40;

/// Hard limit: the part count and sequence number are single octets in the UDH and SAR TLVs.
pub const MAX_PARTS_HARD_LIMIT: u8 = 255;
/// Default maximum number of parts per message.
pub const DEFAULT_MAX_PARTS: u8 = 10;
/// Default bound on a message_payload TLV (octets).
pub const DEFAULT_MAX_PAYLOAD_OCTETS: u16 = 2048;

/// How a link carries texts longer than one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SegmentMode {
    /// UDH concatenation, IEI 0x00, 8-bit reference.
    #[default]
    Udh8,
    /// UDH concatenation, IEI 0x08, 16-bit reference.
    Udh16,
    /// SAR TLVs (16-bit sar_msg_ref_num), no UDH.
    Sar,
    /// One PDU, the whole text in message_payload.
    MessagePayload,
}

impl SegmentMode {
    /// The reference width this mode needs, `None` if it needs none.
    pub const fn ref_width(self) -> Option<RefWidth> {
        match self {
            SegmentMode::Udh8 => Some(RefWidth::Bits8),
            SegmentMode::Udh16 | SegmentMode::Sar => Some(RefWidth::Bits16),
            SegmentMode::MessagePayload => None,
        }
    }

    /// Octets of UDH this mode puts in front of each part of a multipart message.
    pub const fn udh_octets(self) -> usize {
        match self {
            SegmentMode::Udh8 => 6,
            SegmentMode::Udh16 => 7,
            SegmentMode::Sar | SegmentMode::MessagePayload => 0,
        }
    }
}

impl std::str::FromStr for SegmentMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "udh8" | "udh" => Ok(SegmentMode::Udh8),
            "udh16" => Ok(SegmentMode::Udh16),
            "sar" => Ok(SegmentMode::Sar),
            "message_payload" | "payload" => Ok(SegmentMode::MessagePayload),
            other => Err(format!(
                "unknown segmentation mode {other:?} (expected udh8, udh16, sar or message_payload)"
            )),
        }
    }
}

/// Per-link segmentation settings (already validated: the types carry the bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentConfig {
    pub mode: SegmentMode,
    /// Maximum parts per message, 1..=255.
    pub max_parts: NonZeroU8,
    /// Maximum octets in a message_payload TLV (mode `MessagePayload` only).
    pub max_payload_octets: u16,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            mode: SegmentMode::Udh8,
            max_parts: NonZeroU8::new(DEFAULT_MAX_PARTS).expect("non-zero constant"),
            max_payload_octets: DEFAULT_MAX_PAYLOAD_OCTETS,
        }
    }
}

impl SegmentConfig {
    pub fn with_mode(mode: SegmentMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("text needs {parts} parts, more than the maximum of {max} for this link")]
    TooManyParts { parts: usize, max: u8 },
    #[error("text needs {octets} octets of message_payload, more than the maximum of {max}")]
    PayloadTooLong { octets: usize, max: usize },
}

/// Units (septets / octets / UTF-16 units) that fit a single, unsegmented part.
pub const fn single_part_units(encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 => 160,
        Encoding::Latin1 => 140,
        Encoding::Ucs2 => 70,
    }
}

/// Units per part of a multipart message in `mode` (for `MessagePayload`: the single-part
/// capacity, since such a message never has more than one part).
pub const fn multipart_units(encoding: Encoding, mode: SegmentMode) -> usize {
    // 140 octets of user data minus the UDH; for GSM7 the septets after a UDH start on a
    // septet boundary (fill bits), hence floor((140 - udh) * 8 / 7).
    let udh = match mode {
        SegmentMode::Udh8 | SegmentMode::Sar => 6,
        SegmentMode::Udh16 => 7,
        SegmentMode::MessagePayload => 0,
    };
    match encoding {
        Encoding::Gsm7 => (140 - udh) * 8 / 7,
        Encoding::Latin1 => 140 - udh,
        Encoding::Ucs2 => (140 - udh) / 2,
    }
}

/// Cost of `c` in `encoding`. Only called on text already validated for `encoding`; an
/// unrepresentable char would count as 1 (never reached).
#[inline]
fn units_of(encoding: Encoding, c: char) -> usize {
    usize::from(encoding.char_units(c).unwrap_or(1))
}

/// Greedy cut: from byte offset `start`, the longest run of whole characters whose units fit
/// `capacity`. Returns (end byte offset, units). Makes progress whenever `capacity >= 2`
/// (every character costs at most 2 units), which all capacities here satisfy.
#[inline]
fn next_cut(text: &str, start: usize, encoding: Encoding, capacity: usize) -> (usize, usize) {
    let mut fill = 0;
    if encoding == Encoding::Gsm7 {
        // Same rule, with the ASCII fast path of the GSM table.
        let mut i = start;
        while i < text.len() {
            let (cost, len) = text::gsm7_septets_at(text, i);
            let cost = usize::from(cost.unwrap_or(1));
            if fill + cost > capacity {
                return (i, fill);
            }
            fill += cost;
            i += len;
        }
        return (text.len(), fill);
    }
    for (offset, c) in text[start..].char_indices() {
        let cost = units_of(encoding, c);
        if fill + cost > capacity {
            return (start + offset, fill);
        }
        fill += cost;
    }
    (text.len(), fill)
}

/// Iterates over the parts of a multipart text: (byte range start, end, units).
struct Cuts<'a> {
    text: &'a str,
    pos: usize,
    encoding: Encoding,
    capacity: usize,
}

impl Iterator for Cuts<'_> {
    type Item = (usize, usize, usize);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        let (end, units) = next_cut(self.text, start, self.encoding, self.capacity);
        self.pos = end;
        Some((start, end, units))
    }
}

/// The layout decision shared by `check_text_len` and `segment`. Allocates nothing.
pub(crate) fn plan(
    text: &str,
    requested: Option<Encoding>,
    cfg: &SegmentConfig,
) -> Result<TextInfo, SegmentError> {
    let text::Measure {
        encoding,
        units,
        has_pairs,
    } = text::measure(text, requested)?;
    let opu = encoding.octets_per_unit();
    let single = single_part_units(encoding);
    let mut info = TextInfo {
        encoding,
        data_coding: encoding.data_coding(),
        units,
        octets: units * opu,
        parts: 1,
        units_per_part: single,
        remaining_in_last_part: single.saturating_sub(units),
        message_payload: false,
    };
    if units <= single {
        return Ok(info);
    }
    if cfg.mode == SegmentMode::MessagePayload {
        let max = usize::from(cfg.max_payload_octets);
        if info.octets > max {
            return Err(SegmentError::PayloadTooLong {
                octets: info.octets,
                max,
            });
        }
        info.units_per_part = max / opu;
        info.remaining_in_last_part = info.units_per_part - units;
        info.message_payload = true;
        return Ok(info);
    }
    let capacity = multipart_units(encoding, cfg.mode);
    let (parts, last_units) = if has_pairs {
        // A pair may move to the next part: walk the characters (greedy cut).
        let mut parts = 0;
        let mut last_units = 0;
        for (_, _, part_units) in (Cuts {
            text,
            pos: 0,
            encoding,
            capacity,
        }) {
            parts += 1;
            last_units = part_units;
        }
        (parts, last_units)
    } else {
        // Every character is one unit: cuts fall every `capacity` units.
        let parts = units.div_ceil(capacity);
        (parts, units - (parts - 1) * capacity)
    };
    if parts > usize::from(cfg.max_parts.get()) {
        return Err(SegmentError::TooManyParts {
            parts,
            max: cfg.max_parts.get(),
        });
    }
    info.parts = parts;
    info.units_per_part = capacity;
    info.remaining_in_last_part = capacity - last_units;
    Ok(info)
}

/// One SMPP part, ready to be put into a submit_sm.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// 1-based sequence number of this part.
    pub seq: u8,
    /// Number of parts of the message.
    pub total: u8,
    /// UDH (if any) followed by the encoded text of this part (unpacked septets for GSM7).
    /// Empty for message_payload.
    pub short_message: Vec<u8>,
    /// `ESM_CLASS_UDHI` for UDH modes with more than one part, else 0.
    pub esm_class_bits: u8,
    pub data_coding: u8,
    /// SAR TLVs or message_payload, in that order of the spec; empty otherwise.
    pub tlvs: Tlvs,
    /// Text units carried by this part.
    pub units: usize,
}

impl Part {
    /// Sets esm_class UDHI, data_coding, short_message and appends this part's TLVs to `sm`.
    /// Other fields (addresses, registered_delivery, ...) stay as the caller set them.
    pub fn fill(self, sm: &mut SubmitSm) {
        sm.esm_class = (sm.esm_class & !ESM_CLASS_UDHI) | self.esm_class_bits;
        sm.data_coding = self.data_coding;
        sm.short_message = self.short_message;
        for t in self.tlvs.iter() {
            // Cannot fail: the value came out of a Tlvs, so it already fits a TLV.
            let _ = sm.tlvs.push(t.tag, t.value);
        }
    }

    /// A copy of `template` carrying this part.
    pub fn to_submit_sm(self, template: &SubmitSm) -> SubmitSm {
        let mut sm = template.clone();
        self.fill(&mut sm);
        sm
    }
}

/// The result of segmenting one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmented {
    pub info: TextInfo,
    /// The concatenation reference used (multipart UDH/SAR only).
    pub reference: Option<u16>,
    pub parts: Vec<Part>,
}

/// Segments `text` for a link configured by `cfg`, taking a concatenation reference for
/// `destination` from `refs` only if the message really has several parts.
/// `refs` should have been made for `cfg.mode` ([`RefAllocator::for_mode`]).
pub fn segment(
    text: &str,
    requested: Option<Encoding>,
    cfg: &SegmentConfig,
    refs: &mut RefAllocator,
    destination: &[u8],
) -> Result<Segmented, SegmentError> {
    let info = plan(text, requested, cfg)?;
    let reference = if info.parts > 1 {
        let r = refs.next(destination);
        Some(match cfg.mode.ref_width() {
            Some(RefWidth::Bits8) => r & 0xFF,
            _ => r,
        })
    } else {
        None
    };
    Ok(build(text, info, cfg, reference.unwrap_or(0)))
}

/// Like [`segment`] with an explicit reference (masked to 8 bits for `Udh8`).
pub fn segment_with_reference(
    text: &str,
    requested: Option<Encoding>,
    cfg: &SegmentConfig,
    reference: u16,
) -> Result<Segmented, SegmentError> {
    let info = plan(text, requested, cfg)?;
    let reference = match cfg.mode {
        SegmentMode::Udh8 => reference & 0xFF,
        _ => reference,
    };
    let mut out = build(text, info, cfg, reference);
    if out.parts.len() <= 1 {
        out.reference = None;
    }
    Ok(out)
}

fn build(text: &str, info: TextInfo, cfg: &SegmentConfig, reference: u16) -> Segmented {
    let encoding = info.encoding;
    let data_coding = info.data_coding;
    let encode_into = |slice: &str, out: &mut Vec<u8>| {
        // Cannot fail: `plan` validated the whole text for `encoding`.
        let _ = text::encode_into(slice, encoding, out);
    };

    if info.message_payload {
        let mut payload = Vec::with_capacity(info.octets);
        encode_into(text, &mut payload);
        let mut tlvs = Tlvs::new();
        // Cannot fail: `plan` bounded the payload by a u16 maximum.
        let _ = tlvs.push(tag::MESSAGE_PAYLOAD, &payload);
        return Segmented {
            info,
            reference: None,
            parts: vec![Part {
                seq: 1,
                total: 1,
                short_message: Vec::new(),
                esm_class_bits: 0,
                data_coding,
                tlvs,
                units: info.units,
            }],
        };
    }

    if info.parts == 1 {
        let mut short_message = Vec::with_capacity(info.octets);
        encode_into(text, &mut short_message);
        return Segmented {
            info,
            reference: None,
            parts: vec![Part {
                seq: 1,
                total: 1,
                short_message,
                esm_class_bits: 0,
                data_coding,
                tlvs: Tlvs::new(),
                units: info.units,
            }],
        };
    }

    // Multipart: encode once, then cut the encoded units. The cut rule here (back off one
    // unit if the last unit would be the first half of a pair) is the unit-level twin of the
    // character-level greedy cut in `plan`; the property test holds them to agreement.
    let mut encoded = Vec::with_capacity(info.octets);
    encode_into(text, &mut encoded);
    let capacity = info.units_per_part;
    // `plan` bounded parts by max_parts <= 255.
    let total = info.parts as u8;
    let [ref_hi, ref_lo] = reference.to_be_bytes();
    let opu = encoding.octets_per_unit();
    let udh_octets = cfg.mode.udh_octets();
    let mut parts = Vec::with_capacity(info.parts);
    let mut pos = 0;
    while pos < info.units {
        let mut end = (pos + capacity).min(info.units);
        if end < info.units && starts_pair(&encoded, encoding, end - 1) {
            end -= 1;
        }
        let seq = (parts.len() + 1) as u8;
        let mut short_message = Vec::with_capacity(udh_octets + (end - pos) * opu);
        let mut tlvs = Tlvs::new();
        let mut esm_class_bits = 0;
        match cfg.mode {
            SegmentMode::Udh8 => {
                short_message.extend_from_slice(&[0x05, 0x00, 0x03, ref_lo, total, seq]);
                esm_class_bits = ESM_CLASS_UDHI;
            }
            SegmentMode::Udh16 => {
                short_message.extend_from_slice(&[0x06, 0x08, 0x04, ref_hi, ref_lo, total, seq]);
                esm_class_bits = ESM_CLASS_UDHI;
            }
            SegmentMode::Sar => {
                tlvs.push_u16(tag::SAR_MSG_REF_NUM, reference);
                tlvs.push_u8(tag::SAR_TOTAL_SEGMENTS, total);
                tlvs.push_u8(tag::SAR_SEGMENT_SEQNUM, seq);
            }
            SegmentMode::MessagePayload => {} // handled above
        }
        short_message.extend_from_slice(&encoded[pos * opu..end * opu]);
        parts.push(Part {
            seq,
            total,
            short_message,
            esm_class_bits,
            data_coding,
            tlvs,
            units: end - pos,
        });
        pos = end;
    }
    debug_assert_eq!(parts.len(), info.parts, "plan and build disagree");
    Segmented {
        info,
        reference: Some(reference),
        parts,
    }
}

/// True if unit `i` of the encoded text is the first half of a two-unit character: an ESC
/// (our GSM encoder emits 0x1B only as the start of a pair, and no extension code is 0x1B) or
/// a UTF-16 high surrogate.
#[inline]
fn starts_pair(encoded: &[u8], encoding: Encoding, i: usize) -> bool {
    match encoding {
        Encoding::Gsm7 => encoded[i] == text::GSM_ESC,
        Encoding::Latin1 => false,
        Encoding::Ucs2 => (0xD8..=0xDB).contains(&encoded[2 * i]),
    }
}

/// A concatenation header found at the start of a `short_message` (UDHI set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcatHeader {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
    /// Octets of the whole UDH including the UDHL octet: the text starts here.
    pub udh_octets: usize,
}

/// Splits a UDH off `short_message` (caller checked esm_class UDHI): returns the UDH length
/// (including the UDHL octet) and the concatenation IE if there is one. `None` if the UDH
/// length runs past the message. Never panics on any input.
pub fn parse_udh(short_message: &[u8]) -> Option<(usize, Option<ConcatHeader>)> {
    let udhl = usize::from(*short_message.first()?);
    let udh_octets = 1 + udhl;
    let body = short_message.get(1..udh_octets)?;
    let mut i = 0;
    let mut concat = None;
    while i + 2 <= body.len() {
        let iei = body[i];
        let len = usize::from(body[i + 1]);
        let Some(value) = body.get(i + 2..i + 2 + len) else {
            break;
        };
        match (iei, value) {
            (0x00, &[reference, total, seq]) => {
                concat = Some(ConcatHeader {
                    reference: u16::from(reference),
                    total,
                    seq,
                    udh_octets,
                })
            }
            (0x08, &[hi, lo, total, seq]) => {
                concat = Some(ConcatHeader {
                    reference: u16::from_be_bytes([hi, lo]),
                    total,
                    seq,
                    udh_octets,
                })
            }
            _ => {}
        }
        i += 2 + len;
    }
    Some((udh_octets, concat))
}

// ---------------------------------------------------------------------------------------------
// Reference numbers

/// Width of a concatenation reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefWidth {
    Bits8,
    Bits16,
}

impl RefWidth {
    pub const fn range(self) -> u32 {
        match self {
            RefWidth::Bits8 => 256,
            RefWidth::Bits16 => 65536,
        }
    }
}

/// Hands out concatenation references with bounded memory: one counter per destination hash
/// bucket (`2^bucket_bits` buckets of 2 octets; 4096 buckets = 8 KiB by default).
///
/// **Guarantee.** A destination always maps to the same bucket, and each bucket's counter
/// steps through a cycle of [`window`](Self::window) distinct references. Hence two
/// references handed out for the same destination are equal only if at least `window`
/// references were handed out from that destination's bucket between them (counting the later
/// one): within any run of `window` consecutive allocations of a bucket — and so within any
/// `window` consecutive messages to one destination when no other destination shares its
/// bucket — references never repeat. Other destinations hashing to the same bucket can only
/// shorten the run *in messages to that destination*, never break the bucket-level bound.
/// `window` is 256 (8-bit) or 65536 (16-bit) divided by the shard count.
///
/// **Shards.** Allocators on different cores that may send to the same destination should be
/// built with distinct `shard` indices of the same `shards` count: each then uses only
/// references congruent to its index, so two shards never hand out the same reference.
///
/// **Restarts.** Counters start at seed-derived positions, so a restart with a fresh seed does
/// not restart every destination at reference 0. (No clock or RNG is read here: the caller
/// passes the seed.)
///
/// Destinations are compared as the bytes given; the caller passes the normalised address.
#[derive(Debug, Clone)]
pub struct RefAllocator {
    width: RefWidth,
    shard: u32,
    shards: u32,
    /// References per shard: counters run over 0..per_shard.
    per_shard: u32,
    seed: u64,
    counters: Box<[u16]>,
}

/// Default bucket count exponent (4096 buckets).
pub const DEFAULT_REF_BUCKET_BITS: u8 = 12;
/// Upper bound on buckets (2^20 = 2 MiB of counters) so a config typo cannot eat memory.
pub const MAX_REF_BUCKET_BITS: u8 = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefAllocatorError {
    #[error("bucket_bits {0} is above the maximum of {MAX_REF_BUCKET_BITS}")]
    TooManyBuckets(u8),
    #[error("shard {shard} of {shards} is invalid (need shard < shards and shards <= {max})")]
    BadShard { shard: u32, shards: u32, max: u32 },
}

impl RefAllocator {
    /// One allocator of `width`, 4096 buckets, unsharded.
    pub fn new(width: RefWidth, seed: u64) -> Self {
        Self::with_options(width, seed, DEFAULT_REF_BUCKET_BITS, 0, 1)
            .expect("default options are valid")
    }

    /// An allocator suited to `mode` (8-bit for `Udh8`, 16-bit otherwise).
    pub fn for_mode(mode: SegmentMode, seed: u64) -> Self {
        Self::new(mode.ref_width().unwrap_or(RefWidth::Bits16), seed)
    }

    /// `shards` may be at most `range / 2` so each shard keeps a window of at least 2.
    pub fn with_options(
        width: RefWidth,
        seed: u64,
        bucket_bits: u8,
        shard: u32,
        shards: u32,
    ) -> Result<Self, RefAllocatorError> {
        if bucket_bits > MAX_REF_BUCKET_BITS {
            return Err(RefAllocatorError::TooManyBuckets(bucket_bits));
        }
        let max = width.range() / 2;
        if shards == 0 || shard >= shards || shards > max {
            return Err(RefAllocatorError::BadShard { shard, shards, max });
        }
        let per_shard = width.range() / shards;
        let buckets = 1usize << bucket_bits;
        let counters = (0..buckets)
            .map(|b| (splitmix64(seed ^ (b as u64)) % u64::from(per_shard)) as u16)
            .collect();
        Ok(Self {
            width,
            shard,
            shards,
            per_shard,
            seed,
            counters,
        })
    }

    pub fn width(&self) -> RefWidth {
        self.width
    }

    /// Allocations of one bucket between two equal references (see the type's guarantee).
    pub fn window(&self) -> u32 {
        self.per_shard
    }

    /// The bucket `destination` maps to (exposed for tests and diagnostics).
    pub fn bucket_of(&self, destination: &[u8]) -> usize {
        let h = splitmix64(fnv1a(destination) ^ self.seed);
        (h as usize) & (self.counters.len() - 1)
    }

    /// The next reference for `destination`.
    pub fn next(&mut self, destination: &[u8]) -> u16 {
        let bucket = self.bucket_of(destination);
        let counter = &mut self.counters[bucket];
        let current = u32::from(*counter);
        *counter = ((current + 1) % self.per_shard) as u16;
        // < range: current < per_shard, per_shard * shards <= range.
        (current * self.shards + self.shard) as u16
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::text::{GSM_ESC, check_text_len, decode};
    use proptest::prelude::*;

    fn cfg(mode: SegmentMode) -> SegmentConfig {
        SegmentConfig::with_mode(mode)
    }

    fn seg(text: &str, requested: Option<Encoding>, mode: SegmentMode) -> Segmented {
        segment_with_reference(text, requested, &cfg(mode), 0xABCD).unwrap()
    }

    /// The text of a part (UDH stripped, decoded).
    fn part_text(part: &Part) -> String {
        let body = if part.esm_class_bits & ESM_CLASS_UDHI != 0 {
            let (udh, _) = parse_udh(&part.short_message).unwrap();
            &part.short_message[udh..]
        } else if part.short_message.is_empty() {
            part.tlvs.get(tag::MESSAGE_PAYLOAD).unwrap_or(&[])
        } else {
            &part.short_message[..]
        };
        decode(body, part.data_coding).unwrap()
    }

    fn payload_units(part: &Part) -> usize {
        let udh = if part.esm_class_bits & ESM_CLASS_UDHI != 0 {
            parse_udh(&part.short_message).unwrap().0
        } else {
            0
        };
        let octets = part.short_message.len() - udh;
        if part.data_coding == 8 {
            octets / 2
        } else {
            octets
        }
    }

    #[test]
    fn capacities_table() {
        use Encoding::*;
        use SegmentMode::*;
        let table = [
            (Gsm7, Udh8, 160, 153),
            (Gsm7, Udh16, 160, 152),
            (Gsm7, Sar, 160, 153),
            (Latin1, Udh8, 140, 134),
            (Latin1, Udh16, 140, 133),
            (Latin1, Sar, 140, 134),
            (Ucs2, Udh8, 70, 67),
            (Ucs2, Udh16, 70, 66),
            (Ucs2, Sar, 70, 67),
        ];
        for (enc, mode, single, multi) in table {
            assert_eq!(single_part_units(enc), single);
            assert_eq!(multipart_units(enc, mode), multi, "{enc:?} {mode:?}");
        }
    }

    #[test]
    fn gsm7_part_boundaries() {
        // (chars, mode, expected parts)
        let cases = [
            (0, SegmentMode::Udh8, 1),
            (160, SegmentMode::Udh8, 1),
            (161, SegmentMode::Udh8, 2),
            (306, SegmentMode::Udh8, 2),
            (307, SegmentMode::Udh8, 3),
            (304, SegmentMode::Udh16, 2),
            (305, SegmentMode::Udh16, 3),
            (306, SegmentMode::Sar, 2),
            (307, SegmentMode::Sar, 3),
            (1530, SegmentMode::Udh8, 10),
        ];
        for (n, mode, parts) in cases {
            let text = "x".repeat(n);
            let out = seg(&text, None, mode);
            assert_eq!(out.parts.len(), parts, "{n} chars {mode:?}");
            let info = check_text_len(&text, None, &cfg(mode)).unwrap();
            assert_eq!(info.parts, parts);
            assert_eq!(info.units, n);
        }
    }

    #[test]
    fn boundary_153_vs_154() {
        // A concatenated GSM7 part carries 153 septets, not 154 (nor 160).
        let text = "a".repeat(153) + &"b".repeat(10);
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.parts.len(), 2);
        assert_eq!(out.parts[0].units, 153);
        assert_eq!(out.parts[0].short_message.len(), 6 + 153);
        assert_eq!(part_text(&out.parts[0]), "a".repeat(153));
        assert_eq!(part_text(&out.parts[1]), "b".repeat(10));
        let info = check_text_len(&text, None, &cfg(SegmentMode::Udh8)).unwrap();
        assert_eq!(info.units_per_part, 153);
        assert_eq!(info.remaining_in_last_part, 143);
        // 2 x 153 = 306 fits two parts; 2 x 154 = 308 needs three.
        assert_eq!(
            seg(&"a".repeat(308), None, SegmentMode::Udh8).parts.len(),
            3
        );
        let out = seg(&"a".repeat(306), None, SegmentMode::Udh8);
        assert_eq!((out.parts[0].units, out.parts[1].units), (153, 153));
    }

    #[test]
    fn udh8_layout_and_flags() {
        let text = "y".repeat(200);
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.reference, Some(0xCD));
        for (i, p) in out.parts.iter().enumerate() {
            assert_eq!(
                &p.short_message[..6],
                &[0x05, 0x00, 0x03, 0xCD, 2, (i + 1) as u8]
            );
            assert_eq!(p.esm_class_bits, ESM_CLASS_UDHI);
            assert_eq!(p.data_coding, 0);
            assert!(p.tlvs.is_empty());
            assert_eq!((p.seq, p.total), ((i + 1) as u8, 2));
        }
    }

    #[test]
    fn udh16_and_sar_layout() {
        let text = "z".repeat(200);
        let out = seg(&text, None, SegmentMode::Udh16);
        assert_eq!(
            &out.parts[1].short_message[..7],
            &[0x06, 0x08, 0x04, 0xAB, 0xCD, 2, 2]
        );
        assert_eq!(out.parts[0].units, 152);

        let out = seg(&text, None, SegmentMode::Sar);
        for p in &out.parts {
            assert_eq!(p.esm_class_bits, 0);
            assert_eq!(p.tlvs.get_u16(tag::SAR_MSG_REF_NUM), Some(0xABCD));
            assert_eq!(p.tlvs.get_u8(tag::SAR_TOTAL_SEGMENTS), Some(2));
            assert_eq!(p.tlvs.get_u8(tag::SAR_SEGMENT_SEQNUM), Some(p.seq));
        }
        assert_eq!(out.parts[0].short_message, vec![b'z'; 153]);
    }

    #[test]
    fn single_part_has_no_udh_or_reference() {
        for mode in [
            SegmentMode::Udh8,
            SegmentMode::Udh16,
            SegmentMode::Sar,
            SegmentMode::MessagePayload,
        ] {
            let out = seg("@hello", None, mode);
            assert_eq!(out.reference, None);
            assert_eq!(out.parts.len(), 1);
            let p = &out.parts[0];
            assert_eq!(p.short_message, vec![0x00, b'h', b'e', b'l', b'l', b'o']);
            assert_eq!(p.esm_class_bits, 0);
            assert!(p.tlvs.is_empty());
        }
    }

    #[test]
    fn message_payload_mode() {
        let text = "p".repeat(500);
        let out = seg(&text, None, SegmentMode::MessagePayload);
        assert_eq!(out.parts.len(), 1);
        let p = &out.parts[0];
        assert!(p.short_message.is_empty());
        assert_eq!(p.tlvs.get(tag::MESSAGE_PAYLOAD).unwrap(), text.as_bytes());
        let info = out.info;
        assert!(info.message_payload);
        assert_eq!(info.remaining_in_last_part, 2048 - 500);

        let too_long = "p".repeat(2049);
        let err = check_text_len(&too_long, None, &cfg(SegmentMode::MessagePayload)).unwrap_err();
        assert_eq!(
            err,
            SegmentError::PayloadTooLong {
                octets: 2049,
                max: 2048
            }
        );
        // UCS2 counts octets: 1024 units = 2048 octets fits, 1025 does not.
        let ucs = "ж".repeat(1024);
        assert!(check_text_len(&ucs, None, &cfg(SegmentMode::MessagePayload)).is_ok());
        let ucs = "ж".repeat(1025);
        assert!(check_text_len(&ucs, None, &cfg(SegmentMode::MessagePayload)).is_err());
    }

    #[test]
    fn esc_pair_never_split() {
        // '{' is char 153 (1-based): its ESC would be septet 153 and its code septet 154.
        let text = "a".repeat(152) + "{" + &"b".repeat(10);
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.parts.len(), 2);
        assert_eq!(out.parts[0].units, 152, "part carries one septet less");
        assert_ne!(*out.parts[0].short_message.last().unwrap(), GSM_ESC);
        assert_eq!(&out.parts[1].short_message[6..8], &[GSM_ESC, 0x28]);
        assert_eq!(part_text(&out.parts[1]), "{bbbbbbbbbb");
        // One char earlier the pair fits exactly at septets 152..153.
        let text = "a".repeat(151) + "{" + &"b".repeat(10);
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.parts[0].units, 153);
        assert_eq!(&out.parts[0].short_message[157..159], &[GSM_ESC, 0x28]);
        // Single-part limit: 159 + '€' = 161 septets -> 2 parts.
        let text = "a".repeat(159) + "€";
        assert_eq!(seg(&text, None, SegmentMode::Udh8).parts.len(), 2);
        let text = "a".repeat(158) + "€";
        assert_eq!(seg(&text, None, SegmentMode::Udh8).parts.len(), 1);
    }

    #[test]
    fn ucs2_boundaries_66_67_and_surrogates() {
        let text = "ж".repeat(70);
        assert_eq!(seg(&text, None, SegmentMode::Udh8).parts.len(), 1);
        let text = "ж".repeat(71);
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.parts.len(), 2);
        assert_eq!(out.parts[0].units, 67);
        assert_eq!(out.parts[0].data_coding, 8);
        let out = seg(&text, None, SegmentMode::Udh16);
        assert_eq!(out.parts[0].units, 66);
        // 134 units: 2 parts with 8-bit UDH, 3 with 16-bit.
        let text = "ж".repeat(134);
        assert_eq!(seg(&text, None, SegmentMode::Udh8).parts.len(), 2);
        assert_eq!(seg(&text, None, SegmentMode::Udh16).parts.len(), 3);

        // Emoji on units 67..68: the pair moves whole to part 2.
        let text = "ж".repeat(66) + "😀" + "end";
        let out = seg(&text, None, SegmentMode::Udh8);
        assert_eq!(out.parts[0].units, 66);
        assert_eq!(part_text(&out.parts[0]), "ж".repeat(66));
        assert_eq!(part_text(&out.parts[1]), "😀end");
        // With a 16-bit UDH the emoji on units 66..67 moves the same way.
        let text = "ж".repeat(65) + "😀" + "end!!";
        let out = seg(&text, None, SegmentMode::Udh16);
        assert_eq!(out.parts[0].units, 65);
        assert_eq!(part_text(&out.parts[1]), "😀end!!");
        let info = check_text_len(&text, None, &cfg(SegmentMode::Udh16)).unwrap();
        assert_eq!((info.units, info.parts), (72, 2));
        assert_eq!(info.remaining_in_last_part, 66 - 7);
        // 68 units with the emoji last still fit one part.
        let text = "ж".repeat(66) + "😀";
        assert_eq!(seg(&text, None, SegmentMode::Udh16).parts.len(), 1);
    }

    #[test]
    fn latin1_override() {
        let text = "é".repeat(141);
        let out = seg(&text, Some(Encoding::Latin1), SegmentMode::Udh8);
        assert_eq!(out.parts.len(), 2);
        assert_eq!(out.parts[0].data_coding, 3);
        assert_eq!(out.parts[0].units, 134);
        assert!(matches!(
            check_text_len("€", Some(Encoding::Latin1), &cfg(SegmentMode::Udh8)),
            Err(SegmentError::Text(TextError::Unrepresentable {
                ch: '€',
                ..
            }))
        ));
    }

    #[test]
    fn max_parts_enforced() {
        let text = "m".repeat(1531); // 11 parts at 153
        let err = check_text_len(&text, None, &cfg(SegmentMode::Udh8)).unwrap_err();
        assert_eq!(err, SegmentError::TooManyParts { parts: 11, max: 10 });
        assert_eq!(
            err.to_string(),
            "text needs 11 parts, more than the maximum of 10 for this link"
        );
        let mut refs = RefAllocator::for_mode(SegmentMode::Udh8, 1);
        assert!(segment(&text, None, &cfg(SegmentMode::Udh8), &mut refs, b"1").is_err());

        let big = SegmentConfig {
            max_parts: NonZeroU8::new(255).unwrap(),
            ..cfg(SegmentMode::Udh8)
        };
        let text = "m".repeat(153 * 255);
        let out = segment_with_reference(&text, None, &big, 7).unwrap();
        assert_eq!(out.parts.len(), 255);
        assert_eq!(out.parts[254].seq, 255);
        let text = "m".repeat(153 * 255 + 1);
        assert_eq!(
            check_text_len(&text, None, &big).unwrap_err(),
            SegmentError::TooManyParts {
                parts: 256,
                max: 255
            }
        );
    }

    #[test]
    fn fills_submit_sm() {
        let mut template = SubmitSm {
            esm_class: 0x03 | ESM_CLASS_UDHI, // store-and-forward mode bits kept, UDHI reset
            registered_delivery: 1,
            ..SubmitSm::default()
        };
        template.tlvs.push_u8(tag::USER_MESSAGE_REFERENCE, 9);
        let out = seg(&"k".repeat(170), None, SegmentMode::Sar);
        let sms: Vec<SubmitSm> = out
            .parts
            .into_iter()
            .map(|p| p.to_submit_sm(&template))
            .collect();
        assert_eq!(sms[0].esm_class, 0x03);
        assert_eq!(sms[0].registered_delivery, 1);
        assert_eq!(sms[1].tlvs.get_u8(tag::USER_MESSAGE_REFERENCE), Some(9));
        assert_eq!(sms[1].tlvs.get_u8(tag::SAR_SEGMENT_SEQNUM), Some(2));
        let out = seg(&"k".repeat(170), None, SegmentMode::Udh8);
        let mut sm = SubmitSm::default();
        out.parts[0].clone().fill(&mut sm);
        assert_eq!(sm.esm_class, ESM_CLASS_UDHI);
        assert_eq!(sm.short_message, out.parts[0].short_message);
    }

    #[test]
    fn segment_takes_reference_only_when_multipart() {
        let mut refs = RefAllocator::for_mode(SegmentMode::Udh8, 42);
        let c = cfg(SegmentMode::Udh8);
        let short = segment("hi", None, &c, &mut refs, b"491701").unwrap();
        assert_eq!(short.reference, None);
        let a = segment(&"l".repeat(200), None, &c, &mut refs, b"491701").unwrap();
        let b = segment(&"l".repeat(200), None, &c, &mut refs, b"491701").unwrap();
        let (ra, rb) = (a.reference.unwrap(), b.reference.unwrap());
        assert!(ra < 256 && rb < 256);
        assert_eq!(
            (ra + 1) % 256,
            rb,
            "the short message did not consume a reference"
        );
        assert_eq!(a.parts[0].short_message[3], ra as u8);
    }

    #[test]
    fn parse_udh_is_total() {
        assert_eq!(parse_udh(&[]), None);
        assert_eq!(parse_udh(&[5, 0, 3]), None);
        // Unknown IE followed by concat IE.
        let udh = [8, 0x24, 1, 0, 0x00, 3, 9, 2, 1];
        assert_eq!(
            parse_udh(&udh),
            Some((
                9,
                Some(ConcatHeader {
                    reference: 9,
                    total: 2,
                    seq: 1,
                    udh_octets: 9
                })
            ))
        );
        // Truncated IE inside a valid UDHL: tolerated, no concat.
        assert_eq!(parse_udh(&[2, 0x00, 3]), Some((3, None)));
    }

    #[test]
    fn ref_allocator_never_repeats_within_window_for_a_destination() {
        for width in [RefWidth::Bits8, RefWidth::Bits16] {
            let mut refs = RefAllocator::new(width, 7);
            let window = refs.window() as usize;
            assert_eq!(window as u32, width.range());
            let mut seen = std::collections::HashSet::new();
            for _ in 0..window {
                assert!(
                    seen.insert(refs.next(b"+15551234")),
                    "repeat inside the window"
                );
            }
            // The next one wraps to the first.
            assert!(!seen.insert(refs.next(b"+15551234")));
        }
    }

    #[test]
    fn ref_allocator_shards_are_disjoint() {
        let mut a = RefAllocator::with_options(RefWidth::Bits8, 1, 4, 0, 2).unwrap();
        let mut b = RefAllocator::with_options(RefWidth::Bits8, 2, 4, 1, 2).unwrap();
        assert_eq!(a.window(), 128);
        let ra: std::collections::HashSet<u16> = (0..128).map(|_| a.next(b"x")).collect();
        let rb: std::collections::HashSet<u16> = (0..128).map(|_| b.next(b"x")).collect();
        assert_eq!(ra.len(), 128);
        assert_eq!(rb.len(), 128);
        assert!(ra.is_disjoint(&rb));
        assert!(ra.iter().chain(&rb).all(|&r| r < 256));
        assert!(RefAllocator::with_options(RefWidth::Bits8, 0, 4, 2, 2).is_err());
        assert!(RefAllocator::with_options(RefWidth::Bits8, 0, 4, 0, 129).is_err());
        assert!(RefAllocator::with_options(RefWidth::Bits8, 0, 21, 0, 1).is_err());
    }

    /// Random texts mixing GSM, extension, non-GSM BMP and astral characters.
    fn text_strategy() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            6 => proptest::sample::select(vec!['a', 'Z', '0', ' ', '@', '\n', 'é', 'Ø', 'Δ']),
            2 => proptest::sample::select(vec!['{', '}', '[', ']', '~', '\\', '^', '|', '€']),
            1 => proptest::sample::select(vec!['ж', 'ç', '中', '`']),
            1 => proptest::sample::select(vec!['😀', '𝄞', '🇩']),
        ];
        prop_oneof![
            // Mostly GSM-only texts, so GSM7 multipart layouts get exercised.
            proptest::collection::vec(
                prop_oneof![
                    8 => proptest::sample::select(vec!['a', '@', ' ', 'Δ', 'é']),
                    2 => proptest::sample::select(vec!['{', '€', '^'])
                ],
                0..700
            ),
            proptest::collection::vec(chars, 0..400),
        ]
        .prop_map(|v| v.into_iter().collect())
    }

    fn mode_strategy() -> impl Strategy<Value = SegmentMode> {
        proptest::sample::select(vec![
            SegmentMode::Udh8,
            SegmentMode::Udh16,
            SegmentMode::Sar,
            SegmentMode::MessagePayload,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// check_text_len agrees with segment, and the parts reassemble to the text.
        #[test]
        fn check_text_len_agrees_with_segment(
            text in text_strategy(),
            mode in mode_strategy(),
            max_parts in 1u8..=12,
            requested in proptest::option::of(proptest::sample::select(vec![
                Encoding::Gsm7, Encoding::Latin1, Encoding::Ucs2,
            ])),
        ) {
            let c = SegmentConfig {
                mode,
                max_parts: NonZeroU8::new(max_parts).unwrap(),
                max_payload_octets: 600,
            };
            let info = check_text_len(&text, requested, &c);
            let out = segment_with_reference(&text, requested, &c, 0x1234);
            match (info, out) {
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (Ok(info), Ok(out)) => {
                    prop_assert_eq!(out.info, info);
                    prop_assert_eq!(out.parts.len(), info.parts);
                    let total = out.parts.len();
                    let mut rebuilt = String::new();
                    let mut units = 0;
                    for (i, p) in out.parts.iter().enumerate() {
                        prop_assert_eq!(usize::from(p.seq), i + 1);
                        prop_assert_eq!(usize::from(p.total), total);
                        prop_assert_eq!(p.data_coding, info.data_coding);
                        prop_assert_eq!(payload_units(p) , if info.message_payload { 0 } else { p.units });
                        prop_assert!(p.units <= info.units_per_part);
                        prop_assert!(p.short_message.len() <= 254);
                        if total > 1 {
                            // Only the last part may be short by more than one unit.
                            if i + 1 < total {
                                prop_assert!(p.units + 1 >= info.units_per_part);
                            }
                            match mode {
                                SegmentMode::Udh8 | SegmentMode::Udh16 => {
                                    let (_, h) = parse_udh(&p.short_message).unwrap();
                                    let h = h.unwrap();
                                    prop_assert_eq!((h.seq, usize::from(h.total)), (p.seq, total));
                                    prop_assert_eq!(h.reference, if mode == SegmentMode::Udh8 { 0x34 } else { 0x1234 });
                                }
                                _ => {}
                            }
                        }
                        let piece = part_text(p);
                        // No part starts or ends inside a pair: each decodes cleanly.
                        prop_assert!(!piece.contains(char::REPLACEMENT_CHARACTER));
                        rebuilt.push_str(&piece);
                        units += p.units;
                    }
                    prop_assert_eq!(rebuilt, text);
                    prop_assert_eq!(units, info.units);
                    let last = out.parts.last().unwrap();
                    prop_assert_eq!(info.remaining_in_last_part, info.units_per_part - last.units);
                }
                (a, b) => prop_assert!(false, "disagree: {:?} vs {:?}", a, b),
            }
        }

        /// The precise allocator guarantee under random interleaving of destinations that
        /// collide in a tiny table: equal references for one destination are at least `window`
        /// bucket allocations apart.
        #[test]
        fn ref_allocator_bucket_guarantee(
            dests in proptest::collection::vec(0u8..12, 1..2000),
            width in proptest::sample::select(vec![RefWidth::Bits8, RefWidth::Bits16]),
            seed in any::<u64>(),
        ) {
            let mut refs = RefAllocator::with_options(width, seed, 2, 0, 1).unwrap();
            let window = refs.window() as usize;
            let mut bucket_count = [0usize; 4];
            // (dest, ref) -> bucket allocation index when last handed out
            let mut last: std::collections::HashMap<(u8, u16), usize> = Default::default();
            for d in dests {
                let dest = [b'4', b'9', d];
                let bucket = refs.bucket_of(&dest);
                let r = refs.next(&dest);
                prop_assert!(u32::from(r) < width.range());
                let idx = bucket_count[bucket];
                bucket_count[bucket] += 1;
                if let Some(prev) = last.insert((d, r), idx) {
                    prop_assert!(idx - prev >= window, "ref {} repeated after {} allocations", r, idx - prev);
                }
            }
        }
    }
}
