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

/// The layout decision shared by `check_text_len` and `segment`.
pub(crate) fn plan(
    text: &str,
    requested: Option<Encoding>,
    cfg: &SegmentConfig,
) -> Result<TextInfo, SegmentError> {
    let encoding = text::resolve_encoding(text, requested)?;
    let units = text::count_units(text, encoding)?;
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

    // `plan` bounded parts by max_parts <= 255.
    let total = info.parts as u8;
    let [ref_hi, ref_lo] = reference.to_be_bytes();
    let opu = encoding.octets_per_unit();
    let cuts = Cuts {
        text,
        pos: 0,
        encoding,
        capacity: info.units_per_part,
    };
    let mut parts = Vec::with_capacity(info.parts);
    for (index, (start, end, units)) in cuts.enumerate() {
        let seq = (index + 1) as u8;
        let mut short_message = Vec::with_capacity(cfg.mode.udh_octets() + units * opu);
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
        encode_into(&text[start..end], &mut short_message);
        parts.push(Part {
            seq,
            total,
            short_message,
            esm_class_bits,
            data_coding,
            tlvs,
            units,
        });
    }
    Segmented {
        info,
        reference: Some(reference),
        parts,
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
mod tests {}
