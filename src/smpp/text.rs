//! Text encodings for SMPP short messages: GSM 03.38 (default alphabet + extension table),
//! Latin-1 and UCS2 (UTF-16BE), the automatic encoding choice, and part counting.
//!
//! Wire conventions (the field's recurring confusions, decided once here):
//! - GSM 03.38 text goes on the SMPP wire **unpacked**: one septet per octet (the SMSC packs it
//!   for the air interface). `@` is septet 0x00 and is an ordinary character: nothing here
//!   treats 0x00 as a terminator. [`pack_septets`]/[`unpack_septets`] exist for the places that
//!   need the packed air format (e.g. a link configured for packed GSM7, tests, the simulator).
//! - Extension-table characters (`{}[]~\^|€` and form feed) are sent as an ESC (0x1B) + code
//!   pair and cost two septets; a pair is never split across parts (see `segment`).
//! - UCS2 is UTF-16BE; characters outside the BMP are surrogate pairs, cost two units and are
//!   never split across parts.
//!
//! Sans-io and pure: no allocation beyond the returned buffers, no clock, no global state.

use super::segment::{self, SegmentConfig, SegmentError};

/// `data_coding` values this module produces (SMPP v3.4 section 5.2.19).
pub mod data_coding {
    /// "SMSC default alphabet": we always mean GSM 03.38 by it.
    pub const DEFAULT: u8 = 0x00;
    /// IA5 (CCITT T.50) / ASCII.
    pub const IA5: u8 = 0x01;
    pub const BINARY: u8 = 0x02;
    pub const LATIN1: u8 = 0x03;
    pub const BINARY_4: u8 = 0x04;
    pub const UCS2: u8 = 0x08;
}

/// The three text encodings smsgw sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GSM 03.38 default alphabet + extension table, unpacked septets; data_coding 0.
    Gsm7,
    /// ISO-8859-1, one octet per character; data_coding 3. Only used when asked for explicitly.
    Latin1,
    /// UTF-16BE with surrogate pairs; data_coding 8.
    Ucs2,
}

impl Encoding {
    pub const fn data_coding(self) -> u8 {
        match self {
            Encoding::Gsm7 => data_coding::DEFAULT,
            Encoding::Latin1 => data_coding::LATIN1,
            Encoding::Ucs2 => data_coding::UCS2,
        }
    }

    /// Octets one counted unit occupies in `short_message` (a septet is sent as one octet).
    pub const fn octets_per_unit(self) -> usize {
        match self {
            Encoding::Gsm7 | Encoding::Latin1 => 1,
            Encoding::Ucs2 => 2,
        }
    }

    /// What a unit of this encoding is called, for API answers and error texts.
    pub const fn unit_name(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "septet",
            Encoding::Latin1 => "octet",
            Encoding::Ucs2 => "utf16_unit",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Latin1 => "latin1",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// Cost of one character in units of this encoding; `None` if it cannot be represented.
    #[inline]
    pub fn char_units(self, c: char) -> Option<u8> {
        match self {
            Encoding::Gsm7 => gsm7_char_septets(c),
            Encoding::Latin1 => (u32::from(c) <= 0xFF).then_some(1),
            Encoding::Ucs2 => Some(c.len_utf16() as u8),
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = TextError;
    /// Accepts the names used in config and API requests (case-insensitive).
    fn from_str(s: &str) -> Result<Self, TextError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gsm7" | "gsm" | "gsm0338" | "gsm-7" | "default" => Ok(Encoding::Gsm7),
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => Ok(Encoding::Latin1),
            "ucs2" | "ucs-2" | "utf16" | "utf-16" | "utf-16be" => Ok(Encoding::Ucs2),
            _ => Err(TextError::UnknownEncodingName),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The requested encoding cannot represent a character of the text.
    #[error("character {ch:?} (U+{code:04X}) at char index {index} cannot be encoded as {encoding}", code = u32::from(*.ch), encoding = .encoding.name())]
    Unrepresentable {
        ch: char,
        /// Index in chars (not bytes) of the first offending character.
        index: usize,
        encoding: Encoding,
    },
    /// `decode` was asked for a data_coding that is not text we understand (binary, JIS, ...).
    #[error("data_coding 0x{0:02X} is not a text encoding smsgw decodes")]
    UnsupportedDataCoding(u8),
    #[error("unknown encoding name (expected gsm7, latin1 or ucs2)")]
    UnknownEncodingName,
}

// ---------------------------------------------------------------------------------------------
// GSM 03.38 tables

/// ESC: the next septet is looked up in the extension table.
pub const GSM_ESC: u8 = 0x1B;

/// GSM 03.38 default alphabet, indexed by septet. 0x1B (ESC) decodes via the extension table;
/// its entry here (NBSP, per 3GPP 23.038 note) is only used for a dangling ESC.
const GSM_DEFAULT: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{A0}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table (after ESC): (septet, char). 3GPP 23.038 6.2.1.1.
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed (page break)
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// Marker in `ASCII_TO_GSM` for "not representable".
const NONE: u8 = 0xFF;
/// Flag in `ASCII_TO_GSM`: the low 7 bits are an extension-table code (needs ESC).
const EXT: u8 = 0x80;

/// Fast path for ASCII input (the common case): default septet, `EXT | code`, or `NONE`.
/// Extension codes are all < 0x7F, so `EXT | code` never collides with `NONE`.
const ASCII_TO_GSM: [u8; 128] = build_ascii_to_gsm();

const fn build_ascii_to_gsm() -> [u8; 128] {
    let mut table = [NONE; 128];
    let mut septet = 0;
    while septet < 128 {
        let c = GSM_DEFAULT[septet] as u32;
        if c < 128 && septet != GSM_ESC as usize {
            table[c as usize] = septet as u8;
        }
        septet += 1;
    }
    let mut i = 0;
    while i < GSM_EXTENSION.len() {
        let (code, c) = GSM_EXTENSION[i];
        // '€' is the only non-ASCII extension char; `gsm7_lookup` handles it.
        if (c as u32) < 128 {
            table[c as usize] = EXT | code;
        }
        i += 1;
    }
    table
}

/// GSM encoding of one character: `Some((septet, escaped))`, or `None` if not representable.
#[inline]
fn gsm7_lookup(c: char) -> Option<(u8, bool)> {
    let code = u32::from(c);
    if code < 128 {
        let v = ASCII_TO_GSM[code as usize];
        return match v {
            NONE => None,
            v if v & EXT != 0 => Some((v & !EXT, true)),
            v => Some((v, false)),
        };
    }
    let septet = match c {
        '£' => 0x01,
        '¥' => 0x03,
        'è' => 0x04,
        'é' => 0x05,
        'ù' => 0x06,
        'ì' => 0x07,
        'ò' => 0x08,
        'Ç' => 0x09,
        'Ø' => 0x0B,
        'ø' => 0x0C,
        'Å' => 0x0E,
        'å' => 0x0F,
        'Δ' => 0x10,
        'Φ' => 0x12,
        'Γ' => 0x13,
        'Λ' => 0x14,
        'Ω' => 0x15,
        'Π' => 0x16,
        'Ψ' => 0x17,
        'Σ' => 0x18,
        'Θ' => 0x19,
        'Ξ' => 0x1A,
        'Æ' => 0x1C,
        'æ' => 0x1D,
        'ß' => 0x1E,
        'É' => 0x1F,
        '¤' => 0x24,
        '¡' => 0x40,
        'Ä' => 0x5B,
        'Ö' => 0x5C,
        'Ñ' => 0x5D,
        'Ü' => 0x5E,
        '§' => 0x5F,
        '¿' => 0x60,
        'ä' => 0x7B,
        'ö' => 0x7C,
        'ñ' => 0x7D,
        'ü' => 0x7E,
        'à' => 0x7F,
        '€' => return Some((0x65, true)),
        _ => return None,
    };
    Some((septet, false))
}

/// The character at byte offset `i` (a char boundary) of `text`, its GSM lookup and its UTF-8
/// length, with a fast path that skips UTF-8 decoding for ASCII (the common case).
#[inline(always)]
fn gsm7_at(text: &str, i: usize) -> (Option<(u8, bool)>, char, usize) {
    let b = text.as_bytes()[i];
    if b < 0x80 {
        let lookup = match ASCII_TO_GSM[usize::from(b)] {
            NONE => None,
            v if v & EXT != 0 => Some((v & !EXT, true)),
            v => Some((v, false)),
        };
        return (lookup, char::from(b), 1);
    }
    // `i` is a char boundary below `text.len()`, so there is a char here.
    let ch = text[i..]
        .chars()
        .next()
        .unwrap_or(char::REPLACEMENT_CHARACTER);
    (gsm7_lookup(ch), ch, ch.len_utf8())
}

/// Septets of the character at byte offset `i` (see [`gsm7_at`]) and its UTF-8 length;
/// `None` if it is not in GSM 03.38.
#[inline(always)]
pub(crate) fn gsm7_septets_at(text: &str, i: usize) -> (Option<u8>, usize) {
    let (lookup, _, len) = gsm7_at(text, i);
    (lookup.map(|(_, escaped)| 1 + u8::from(escaped)), len)
}

/// Septets one character costs in GSM 03.38: 1 (default table), 2 (ESC pair) or `None`.
#[inline]
pub fn gsm7_char_septets(c: char) -> Option<u8> {
    gsm7_lookup(c).map(|(_, escaped)| if escaped { 2 } else { 1 })
}

/// True if every character of `text` is in the GSM default alphabet or its extension table.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm7_lookup(c).is_some())
}

/// The automatic choice: GSM7 if every character fits, else UCS2 (never Latin-1: handsets
/// decode data_coding 3 inconsistently, so Latin-1 is only used on explicit request).
pub fn choose_encoding(text: &str) -> Encoding {
    if is_gsm7(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// `None` picks automatically; `Some(e)` is an override that fails if `e` cannot carry the text.
pub fn resolve_encoding(text: &str, requested: Option<Encoding>) -> Result<Encoding, TextError> {
    match requested {
        None => Ok(choose_encoding(text)),
        Some(encoding) => {
            first_unrepresentable(text, encoding)?;
            Ok(encoding)
        }
    }
}

fn first_unrepresentable(text: &str, encoding: Encoding) -> Result<(), TextError> {
    if encoding == Encoding::Ucs2 {
        return Ok(());
    }
    match text
        .chars()
        .enumerate()
        .find(|&(_, c)| encoding.char_units(c).is_none())
    {
        None => Ok(()),
        Some((index, ch)) => Err(TextError::Unrepresentable {
            ch,
            index,
            encoding,
        }),
    }
}

/// Appends the unpacked GSM 03.38 septets of `text` to `out` (ESC pairs for extension chars).
pub fn encode_gsm7_into(text: &str, out: &mut Vec<u8>) -> Result<(), TextError> {
    out.reserve(text.len());
    let mut i = 0;
    let mut index = 0;
    while i < text.len() {
        let (lookup, ch, len) = gsm7_at(text, i);
        match lookup {
            Some((septet, false)) => out.push(septet),
            Some((septet, true)) => out.extend_from_slice(&[GSM_ESC, septet]),
            None => {
                return Err(TextError::Unrepresentable {
                    ch,
                    index,
                    encoding: Encoding::Gsm7,
                });
            }
        }
        i += len;
        index += 1;
    }
    Ok(())
}

/// Appends the Latin-1 octets of `text` to `out`.
pub fn encode_latin1_into(text: &str, out: &mut Vec<u8>) -> Result<(), TextError> {
    out.reserve(text.len());
    for (index, ch) in text.chars().enumerate() {
        let code = u32::from(ch);
        if code > 0xFF {
            return Err(TextError::Unrepresentable {
                ch,
                index,
                encoding: Encoding::Latin1,
            });
        }
        out.push(code as u8);
    }
    Ok(())
}

/// Appends `text` as UTF-16BE (surrogate pairs for characters beyond the BMP). Cannot fail.
pub fn encode_ucs2_into(text: &str, out: &mut Vec<u8>) {
    out.reserve(text.len() * 2);
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_be_bytes());
    }
}

/// Appends `text` encoded as `encoding` to `out`.
pub fn encode_into(text: &str, encoding: Encoding, out: &mut Vec<u8>) -> Result<(), TextError> {
    match encoding {
        Encoding::Gsm7 => encode_gsm7_into(text, out),
        Encoding::Latin1 => encode_latin1_into(text, out),
        Encoding::Ucs2 => {
            encode_ucs2_into(text, out);
            Ok(())
        }
    }
}

/// `text` encoded as `encoding` (unpacked septets for GSM7).
pub fn encode(text: &str, encoding: Encoding) -> Result<Vec<u8>, TextError> {
    let mut out = Vec::new();
    encode_into(text, encoding, &mut out)?;
    Ok(out)
}

/// Total units of `text` in `encoding` (septets incl. ESC / octets / UTF-16 units).
pub fn count_units(text: &str, encoding: Encoding) -> Result<usize, TextError> {
    match encoding {
        // Latin-1 and GSM7 need the per-char check anyway; UCS2 is a plain count.
        Encoding::Ucs2 => Ok(text.chars().map(char::len_utf16).sum()),
        _ => {
            let mut units = 0;
            for (index, ch) in text.chars().enumerate() {
                units +=
                    usize::from(encoding.char_units(ch).ok_or(TextError::Unrepresentable {
                        ch,
                        index,
                        encoding,
                    })?);
            }
            Ok(units)
        }
    }
}

/// The result of one pass over a text: the encoding to use, its unit count, and whether any
/// character costs two units (ESC pair / surrogate pair), which is what makes part cuts
/// deviate from plain division.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub encoding: Encoding,
    pub units: usize,
    pub has_pairs: bool,
}

/// Chooses (`requested` = `None`) or validates the encoding and counts units in a single pass.
pub fn measure(text: &str, requested: Option<Encoding>) -> Result<Measure, TextError> {
    match requested {
        None => Ok(measure_auto(text)),
        Some(Encoding::Ucs2) => Ok(measure_ucs2(text, 0)),
        Some(encoding) => {
            let mut units = 0;
            let mut has_pairs = false;
            for (index, ch) in text.chars().enumerate() {
                let cost = encoding.char_units(ch).ok_or(TextError::Unrepresentable {
                    ch,
                    index,
                    encoding,
                })?;
                has_pairs |= cost == 2;
                units += usize::from(cost);
            }
            Ok(Measure {
                encoding,
                units,
                has_pairs,
            })
        }
    }
}

fn measure_auto(text: &str) -> Measure {
    let mut septets = 0;
    let mut chars = 0;
    let mut has_pairs = false;
    let mut i = 0;
    while i < text.len() {
        match gsm7_septets_at(text, i) {
            (Some(cost), len) => {
                septets += usize::from(cost);
                has_pairs |= cost == 2;
                chars += 1;
                i += len;
            }
            // Every char before `i` is in the BMP (GSM chars are), so it is one UTF-16 unit:
            // continue counting UTF-16 units from here instead of starting over.
            (None, _) => return measure_ucs2(&text[i..], chars),
        }
    }
    Measure {
        encoding: Encoding::Gsm7,
        units: septets,
        has_pairs,
    }
}

/// UTF-16 units of `rest`, plus `units_before` single units already counted (no pairs).
fn measure_ucs2(rest: &str, units_before: usize) -> Measure {
    let mut units = units_before;
    let mut has_pairs = false;
    for ch in rest.chars() {
        let n = ch.len_utf16();
        has_pairs |= n == 2;
        units += n;
    }
    Measure {
        encoding: Encoding::Ucs2,
        units,
        has_pairs,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding (lenient: input comes from SMSCs and handsets)

/// Decodes unpacked GSM 03.38 septets. Lenient, never fails:
/// - an octet with the high bit set (not a septet) becomes U+FFFD;
/// - ESC followed by a code the extension table does not define yields the default-table
///   character for that code (what 3GPP 23.038 asks a receiving handset to display);
/// - a dangling ESC at the end becomes U+FFFD; ESC ESC is treated as one ESC then the next.
pub fn decode_gsm7(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut i = 0;
    while i < septets.len() {
        let s = septets[i];
        i += 1;
        if s >= 0x80 {
            out.push(char::REPLACEMENT_CHARACTER);
        } else if s == GSM_ESC {
            match septets.get(i) {
                None => out.push(char::REPLACEMENT_CHARACTER),
                Some(&next) if next >= 0x80 => {
                    // Leave the invalid octet for the next round (it becomes U+FFFD).
                    out.push(char::REPLACEMENT_CHARACTER);
                }
                Some(&next) if next == GSM_ESC => {
                    // "ESC ESC" is reserved for a further extension table; show a space-like
                    // NBSP for the first and reinterpret the second.
                    out.push('\u{A0}');
                }
                Some(&next) => {
                    i += 1;
                    match GSM_EXTENSION.iter().find(|&&(code, _)| code == next) {
                        Some(&(_, c)) => out.push(c),
                        None => out.push(GSM_DEFAULT[next as usize]),
                    }
                }
            }
        } else {
            out.push(GSM_DEFAULT[s as usize]);
        }
    }
    out
}

/// ISO-8859-1: every octet maps to the code point of the same value.
pub fn decode_latin1(octets: &[u8]) -> String {
    octets.iter().map(|&b| char::from(b)).collect()
}

/// IA5/ASCII: octets >= 0x80 become U+FFFD.
pub fn decode_ascii(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|&b| {
            if b < 0x80 {
                char::from(b)
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect()
}

/// UTF-16BE. Lenient, never fails: an unpaired surrogate becomes U+FFFD, and so does a
/// trailing odd octet (a truncated unit), so that a broken MO or receipt text still shows.
pub fn decode_ucs2(octets: &[u8]) -> String {
    let units = octets
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    let mut out: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    if octets.len() % 2 == 1 {
        out.push(char::REPLACEMENT_CHARACTER);
    }
    out
}

/// The alphabet a `data_coding` value denotes, as far as decoding text is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alphabet {
    Gsm7,
    Ascii,
    Latin1,
    Ucs2,
}

fn alphabet_of(dc: u8) -> Option<Alphabet> {
    match dc {
        0x00 => Some(Alphabet::Gsm7),
        0x01 => Some(Alphabet::Ascii),
        0x03 => Some(Alphabet::Latin1),
        0x08 => Some(Alphabet::Ucs2),
        // Other SMPP-defined values (binary, JIS, Cyrillic, Hebrew, pictogram, Kanji, KS C).
        0x02 | 0x04..=0x07 | 0x09..=0x0F => None,
        // GSM 03.38 general data coding groups 00xx (uncompressed only): bits 3..2 = alphabet.
        0x10..=0x1F | 0x30..=0x3F => match (dc >> 2) & 0b11 {
            0b00 => Some(Alphabet::Gsm7),
            0b10 => Some(Alphabet::Ucs2),
            _ => None,
        },
        // Compressed text (bit 5): not supported.
        0x20..=0x2F => None,
        // Message waiting indication groups: discard/store with GSM7, store with UCS2.
        0xC0..=0xDF => Some(Alphabet::Gsm7),
        0xE0..=0xEF => Some(Alphabet::Ucs2),
        // Data coding / message class group: bit 2 = 0 GSM7, 1 = 8-bit data.
        0xF0..=0xFF => (dc & 0x04 == 0).then_some(Alphabet::Gsm7),
        _ => None,
    }
}

/// Decodes a short message (or message_payload) given its `data_coding`. Lenient within an
/// encoding (see `decode_gsm7`, `decode_ucs2`); an error only for data codings that are not
/// text (binary) or not supported. The caller strips any UDH first.
pub fn decode(bytes: &[u8], data_coding: u8) -> Result<String, TextError> {
    match alphabet_of(data_coding) {
        Some(Alphabet::Gsm7) => Ok(decode_gsm7(bytes)),
        Some(Alphabet::Ascii) => Ok(decode_ascii(bytes)),
        Some(Alphabet::Latin1) => Ok(decode_latin1(bytes)),
        Some(Alphabet::Ucs2) => Ok(decode_ucs2(bytes)),
        None => Err(TextError::UnsupportedDataCoding(data_coding)),
    }
}

// ---------------------------------------------------------------------------------------------
// Packed septets (air format)

/// Octets needed to pack `septets` septets after `fill_bits` leading fill bits.
pub const fn packed_len(septets: usize, fill_bits: u8) -> usize {
    (septets * 7 + fill_bits as usize).div_ceil(8)
}

/// Packs septets (the low 7 bits of each input octet) LSB-first as in 3GPP 23.038 6.1.2.1.1.
/// `fill_bits` (0..=6) zero bits are inserted first, so that after a UDH of `n` octets the
/// first septet starts on a septet boundary: `fill_bits = (7 - (n * 8) % 7) % 7`.
/// Values of `fill_bits` above 6 are taken modulo 7.
pub fn pack_septets(septets: &[u8], fill_bits: u8) -> Vec<u8> {
    let fill = u32::from(fill_bits % 7);
    let mut out = Vec::with_capacity(packed_len(septets.len(), fill as u8));
    let mut acc: u32 = 0;
    let mut bits = fill;
    for &s in septets {
        acc |= u32::from(s & 0x7F) << bits;
        bits += 7;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
    out
}

/// Unpacks `septet_count` septets from `packed` after `fill_bits` leading fill bits (the
/// inverse of [`pack_septets`]). The count must come from the caller (e.g. the TP-UDL),
/// because 7 spare bits at the end are indistinguishable from a septet 0x00 (`@`). If the
/// input holds fewer septets than asked, only the complete ones are returned.
pub fn unpack_septets(packed: &[u8], fill_bits: u8, septet_count: usize) -> Vec<u8> {
    let fill = usize::from(fill_bits % 7);
    let available = (packed.len() * 8).saturating_sub(fill) / 7;
    let count = septet_count.min(available);
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let bit = fill + n * 7;
        let byte = bit / 8;
        let shift = bit % 8;
        let mut v = u16::from(packed[byte]) >> shift;
        if shift > 1 {
            v |= u16::from(*packed.get(byte + 1).unwrap_or(&0)) << (8 - shift);
        }
        out.push((v & 0x7F) as u8);
    }
    out
}

/// Fill bits needed after a UDH of `udh_octets` octets (including the UDHL octet).
pub const fn fill_bits_after_udh(udh_octets: usize) -> u8 {
    ((7 - (udh_octets * 8) % 7) % 7) as u8
}

// ---------------------------------------------------------------------------------------------
// Part counting (the CheckTextLen answer)

/// How a text would be sent: the answer to "CheckTextLen". Agrees with [`segment::segment`]
/// by construction (both run the same splitter) and by a property test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextInfo {
    pub encoding: Encoding,
    pub data_coding: u8,
    /// Septets including ESC octets (GSM7), octets (Latin-1) or UTF-16 units (UCS2).
    pub units: usize,
    /// Payload octets on the SMPP wire without any UDH (`units * octets_per_unit`).
    pub octets: usize,
    /// SMPP parts (submit_sm PDUs); 1 for a single part or for message_payload.
    pub parts: usize,
    /// Capacity of one part in units for this layout (160/153/152 for GSM7, ...; for
    /// message_payload the configured maximum).
    pub units_per_part: usize,
    /// Units still free in the last part. A middle part may carry one unit less than
    /// `units_per_part` when an ESC pair or surrogate pair would straddle the boundary.
    pub remaining_in_last_part: usize,
    /// True if the whole text travels in one message_payload TLV.
    pub message_payload: bool,
}

/// Encoding, unit count and part layout of `text` under `cfg` (with `requested` = `None` for
/// the automatic choice). Fails exactly when [`segment::segment`] would: unrepresentable
/// character for an explicit encoding, too many parts, message_payload over the maximum.
pub fn check_text_len(
    text: &str,
    requested: Option<Encoding>,
    cfg: &SegmentConfig,
) -> Result<TextInfo, SegmentError> {
    segment::plan(text, requested, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_table_round_trips_every_septet() {
        for septet in 0u8..128 {
            if septet == GSM_ESC {
                continue;
            }
            let c = GSM_DEFAULT[septet as usize];
            assert_eq!(gsm7_lookup(c), Some((septet, false)), "char {c:?}");
            assert_eq!(decode_gsm7(&[septet]), c.to_string());
        }
    }

    #[test]
    fn extension_table_round_trips() {
        for &(code, c) in &GSM_EXTENSION {
            let enc = encode(&c.to_string(), Encoding::Gsm7).unwrap();
            assert_eq!(enc, vec![GSM_ESC, code], "char {c:?}");
            assert_eq!(decode_gsm7(&enc), c.to_string());
            assert_eq!(gsm7_char_septets(c), Some(2));
        }
    }

    #[test]
    fn table_driven_encodings() {
        // (text, GSM7 septets or None if not GSM7)
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("", Some(&[])),
            ("@", Some(&[0x00])),
            ("@@a@", Some(&[0x00, 0x00, 0x61, 0x00])),
            ("$_", Some(&[0x02, 0x11])),
            ("€5", Some(&[0x1B, 0x65, 0x35])),
            ("a{b}", Some(&[0x61, 0x1B, 0x28, 0x62, 0x1B, 0x29])),
            ("Hi\r\n", Some(&[0x48, 0x69, 0x0D, 0x0A])),
            ("`", None),
            ("ç", None), // only capital Ç is in the table
            ("\t", None),
            ("Привет", None),
        ];
        for &(text, septets) in cases {
            match septets {
                Some(s) => {
                    assert_eq!(encode(text, Encoding::Gsm7).unwrap(), s, "{text:?}");
                    assert_eq!(choose_encoding(text), Encoding::Gsm7);
                    assert_eq!(count_units(text, Encoding::Gsm7).unwrap(), s.len());
                    assert_eq!(decode(s, 0).unwrap(), text);
                }
                None => {
                    assert!(encode(text, Encoding::Gsm7).is_err(), "{text:?}");
                    assert_eq!(choose_encoding(text), Encoding::Ucs2);
                }
            }
        }
    }

    #[test]
    fn at_sign_survives_everywhere() {
        // '@' is 0x00 unpacked: not a terminator, not dropped.
        let text = "@ home @ 5 @";
        let wire = encode(text, Encoding::Gsm7).unwrap();
        assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 3);
        assert_eq!(decode(&wire, 0).unwrap(), text);
        let packed = pack_septets(&wire, 0);
        assert_eq!(decode_gsm7(&unpack_septets(&packed, 0, wire.len())), text);
        // Trailing '@' as the 8th septet of 7 octets: the count disambiguates.
        let seven = "abcdef@";
        let wire = encode(seven, Encoding::Gsm7).unwrap();
        let packed = pack_septets(&wire, 0);
        assert_eq!(packed.len(), 7);
        assert_eq!(decode_gsm7(&unpack_septets(&packed, 0, 7)), seven);
    }

    #[test]
    fn packing_known_vector() {
        // 3GPP 23.038 example: "hellohello" packs to E8 32 9B FD 46 97 D9 EC 37.
        let wire = encode("hellohello", Encoding::Gsm7).unwrap();
        assert_eq!(
            pack_septets(&wire, 0),
            vec![0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37]
        );
        assert_eq!(fill_bits_after_udh(6), 1);
        assert_eq!(fill_bits_after_udh(7), 0);
        assert_eq!(packed_len(160, 0), 140);
        assert_eq!(packed_len(153, 1) + 6, 140);
        assert_eq!(packed_len(152, 0) + 7, 140);
    }

    #[test]
    fn latin1_and_override() {
        assert_eq!(encode("ÿé", Encoding::Latin1).unwrap(), vec![0xFF, 0xE9]);
        assert_eq!(decode(&[0xFF, 0xE9], 3).unwrap(), "ÿé");
        let err = resolve_encoding("a€", Some(Encoding::Latin1)).unwrap_err();
        assert_eq!(
            err,
            TextError::Unrepresentable {
                ch: '€',
                index: 1,
                encoding: Encoding::Latin1
            }
        );
        assert!(resolve_encoding("ç", Some(Encoding::Gsm7)).is_err());
        assert_eq!(
            resolve_encoding("abc", Some(Encoding::Ucs2)).unwrap(),
            Encoding::Ucs2
        );
        assert_eq!(resolve_encoding("abc", None).unwrap(), Encoding::Gsm7);
        assert_eq!("UCS2".parse::<Encoding>().unwrap(), Encoding::Ucs2);
    }

    #[test]
    fn ucs2_surrogates_and_lenient_decode() {
        let text = "a😀";
        let wire = encode(text, Encoding::Ucs2).unwrap();
        assert_eq!(wire, vec![0x00, 0x61, 0xD8, 0x3D, 0xDE, 0x00]);
        assert_eq!(count_units(text, Encoding::Ucs2).unwrap(), 3);
        assert_eq!(decode(&wire, 8).unwrap(), text);
        // Odd length: trailing octet becomes U+FFFD, the rest survives.
        assert_eq!(decode(&[0x00, 0x61, 0x00], 8).unwrap(), "a\u{FFFD}");
        // Lone high surrogate.
        assert_eq!(decode(&[0xD8, 0x3D, 0x00, 0x62], 8).unwrap(), "\u{FFFD}b");
    }

    #[test]
    fn lenient_gsm_decode() {
        assert_eq!(decode_gsm7(&[0x61, 0x80, 0x62]), "a\u{FFFD}b");
        assert_eq!(decode_gsm7(&[0x61, GSM_ESC]), "a\u{FFFD}");
        // Unknown extension code shows the default-table char.
        assert_eq!(decode_gsm7(&[GSM_ESC, 0x41]), "A");
        assert_eq!(decode(&[0x41], 0xF0).unwrap(), "A");
        assert_eq!(decode(&[0x00, 0x41], 0x18).unwrap(), "A");
        assert_eq!(
            decode(&[1, 2], 0x04),
            Err(TextError::UnsupportedDataCoding(4))
        );
        assert_eq!(
            decode(&[1, 2], 0xF4),
            Err(TextError::UnsupportedDataCoding(0xF4))
        );
        assert_eq!(decode(&[0x41, 0xC0], 1).unwrap(), "A\u{FFFD}");
    }

    fn gsm_char() -> impl Strategy<Value = char> {
        let mut all: Vec<char> = GSM_DEFAULT
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != GSM_ESC as usize)
            .map(|(_, &c)| c)
            .collect();
        all.extend(GSM_EXTENSION.iter().map(|&(_, c)| c));
        proptest::sample::select(all)
    }

    proptest! {
        #[test]
        fn gsm7_round_trip(chars in proptest::collection::vec(gsm_char(), 0..400)) {
            let text: String = chars.into_iter().collect();
            prop_assert_eq!(choose_encoding(&text), Encoding::Gsm7);
            let wire = encode(&text, Encoding::Gsm7).unwrap();
            prop_assert_eq!(wire.len(), count_units(&text, Encoding::Gsm7).unwrap());
            prop_assert!(wire.iter().all(|&b| b < 0x80));
            prop_assert_eq!(decode(&wire, 0).unwrap(), text);
        }

        #[test]
        fn pack_unpack_round_trip(
            septets in proptest::collection::vec(0u8..128, 0..300),
            fill in 0u8..7,
        ) {
            let packed = pack_septets(&septets, fill);
            prop_assert_eq!(packed.len(), packed_len(septets.len(), fill));
            prop_assert_eq!(unpack_septets(&packed, fill, septets.len()), septets);
        }

        #[test]
        fn ucs2_round_trip(text in "\\PC{0,200}") {
            let wire = encode(&text, Encoding::Ucs2).unwrap();
            prop_assert_eq!(wire.len(), 2 * count_units(&text, Encoding::Ucs2).unwrap());
            prop_assert_eq!(decode(&wire, 8).unwrap(), text);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), dc in any::<u8>()) {
            let _ = decode(&bytes, dc);
            let _ = unpack_septets(&bytes, dc, bytes.len() * 2);
        }

        #[test]
        fn measure_matches_separate_passes(
            text in "[a-z@{€ж😀]{0,60}|\\PC{0,60}",
            requested in proptest::option::of(proptest::sample::select(vec![
                Encoding::Gsm7, Encoding::Latin1, Encoding::Ucs2,
            ])),
        ) {
            match (measure(&text, requested), resolve_encoding(&text, requested)) {
                (Ok(m), Ok(enc)) => {
                    prop_assert_eq!(m.encoding, enc);
                    prop_assert_eq!(m.units, count_units(&text, enc).unwrap());
                    let pairs = text.chars().any(|c| enc.char_units(c) == Some(2));
                    prop_assert_eq!(m.has_pairs, pairs);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }

        #[test]
        fn auto_choice_is_consistent(text in "\\PC{0,100}") {
            let enc = choose_encoding(&text);
            prop_assert!(encode(&text, enc).is_ok());
            if enc == Encoding::Ucs2 {
                prop_assert!(encode(&text, Encoding::Gsm7).is_err());
            }
        }
    }
}
