//! Delivery receipts (DLRs) carried in deliver_sm (or data_sm), and message id normalisation.
//!
//! Recognition is by esm_class bits 2..5 (SMPP v3.4 5.2.12):
//! - `0x04` SMSC delivery receipt, `0x20` intermediate delivery notification: receipts.
//! - `0x08` SME delivery ack and `0x10` SME manual/user ack: accepted as receipts too, because
//!   some SMSCs mark ordinary DLRs with them; the kind is reported so the caller can tell them
//!   apart. They are only a receipt if a message id can be found (else an error).
//! - `0x00` (a normal MO message) and `0x18` (conversation abort): not a receipt, unless
//!   [`ReceiptOptions::accept_unflagged`] is set and the PDU carries a receipted_message_id TLV
//!   or a text starting with `id:` (seen from SMSCs that do not set the flag).
//!
//! Fields come from the TLVs first (receipted_message_id 0x001E, message_state 0x0427,
//! network_error_code 0x0423) and from the text form
//! `id:... sub:... dlvrd:... submit date:... done date:... stat:... err:... text:...` otherwise.
//! The text parser is lenient: keys in any case and order, missing fields, extra spaces,
//! `_`/`-`/no separator inside two-word keys, commas between fields, non-numeric err, text in
//! short_message or message_payload.
//!
//! Pure and sans-io: dates are returned as parsed fields, never related to a clock.

use std::borrow::Cow;

use super::pdu::{SubmitSm, Tlvs, tag};
use super::segment::{ESM_CLASS_UDHI, parse_udh};
use super::text;

/// esm_class message-type bits (2..5).
pub const ESM_CLASS_TYPE_MASK: u8 = 0x3C;

/// Which kind of receipt the esm_class announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// 0x04
    SmscDeliveryReceipt,
    /// 0x08
    SmeDeliveryAck,
    /// 0x10
    SmeManualAck,
    /// 0x20
    IntermediateNotification,
    /// esm_class said "normal message", accepted because of `accept_unflagged`.
    Unflagged,
}

/// The receipt kind announced by `esm_class`, `None` for a normal message or a type that is not
/// a receipt (conversation abort, reserved values).
pub fn receipt_kind(esm_class: u8) -> Option<ReceiptKind> {
    match esm_class & ESM_CLASS_TYPE_MASK {
        0x04 => Some(ReceiptKind::SmscDeliveryReceipt),
        0x08 => Some(ReceiptKind::SmeDeliveryAck),
        0x10 => Some(ReceiptKind::SmeManualAck),
        0x20 => Some(ReceiptKind::IntermediateNotification),
        _ => None,
    }
}

/// Message state (SMPP v3.4 5.2.28), from `message_state` or the `stat:` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptState {
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
}

impl ReceiptState {
    /// Final means no further receipt is expected to change the outcome.
    ///
    /// The spec lists ACCEPTED (6) among the final states, but in the field `ACCEPTD` is widely
    /// sent as an intermediate "accepted by the SMSC/next hop" notice followed by a real
    /// outcome, so we treat it as non-final (the state store's TTL bounds the wait). `UNKNOWN`
    /// is non-final for the same reason: a later receipt may still resolve it.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            ReceiptState::Delivered
                | ReceiptState::Expired
                | ReceiptState::Deleted
                | ReceiptState::Undeliverable
                | ReceiptState::Rejected
        )
    }

    /// From a message_state TLV value (1..=8); `None` otherwise.
    pub const fn from_message_state(v: u8) -> Option<Self> {
        Some(match v {
            1 => ReceiptState::Enroute,
            2 => ReceiptState::Delivered,
            3 => ReceiptState::Expired,
            4 => ReceiptState::Deleted,
            5 => ReceiptState::Undeliverable,
            6 => ReceiptState::Accepted,
            7 => ReceiptState::Unknown,
            8 => ReceiptState::Rejected,
            _ => return None,
        })
    }

    pub const fn message_state(self) -> u8 {
        match self {
            ReceiptState::Enroute => 1,
            ReceiptState::Delivered => 2,
            ReceiptState::Expired => 3,
            ReceiptState::Deleted => 4,
            ReceiptState::Undeliverable => 5,
            ReceiptState::Accepted => 6,
            ReceiptState::Unknown => 7,
            ReceiptState::Rejected => 8,
        }
    }

    /// The 7-letter word of the standard text form (Appendix B).
    pub const fn stat_word(self) -> &'static str {
        match self {
            ReceiptState::Enroute => "ENROUTE",
            ReceiptState::Delivered => "DELIVRD",
            ReceiptState::Expired => "EXPIRED",
            ReceiptState::Deleted => "DELETED",
            ReceiptState::Undeliverable => "UNDELIV",
            ReceiptState::Accepted => "ACCEPTD",
            ReceiptState::Unknown => "UNKNOWN",
            ReceiptState::Rejected => "REJECTD",
        }
    }

    /// From a `stat:` word, tolerant of case, long forms and separators ("DELIVERED",
    /// "undeliverable", "EN_ROUTE", "FAILED"); a number is read as a message_state value.
    /// `None` if not recognised.
    pub fn from_stat_word(word: &str) -> Option<Self> {
        let word = word.trim();
        if !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit()) {
            return word.parse::<u8>().ok().and_then(Self::from_message_state);
        }
        // Letters only, upper-cased, bounded (longest accepted word is 13 letters).
        let mut buf = [0u8; 16];
        let mut n = 0;
        for b in word.bytes() {
            if b.is_ascii_alphabetic() {
                if n == buf.len() {
                    return None;
                }
                buf[n] = b.to_ascii_uppercase();
                n += 1;
            } else if !matches!(b, b'_' | b'-' | b' ') {
                break;
            }
        }
        Some(match &buf[..n] {
            b"DELIVRD" | b"DELIVERED" | b"DELIVRED" | b"DELIVER" | b"DELIV" => {
                ReceiptState::Delivered
            }
            b"EXPIRED" | b"EXPIRD" => ReceiptState::Expired,
            b"DELETED" | b"DELETD" => ReceiptState::Deleted,
            b"UNDELIV" | b"UNDELIVERABLE" | b"UNDELIVERED" | b"UNDELIVRD" | b"UNDELIVR"
            | b"FAILED" | b"FAIL" => ReceiptState::Undeliverable,
            b"ACCEPTD" | b"ACCEPTED" => ReceiptState::Accepted,
            b"UNKNOWN" | b"UNKNWN" => ReceiptState::Unknown,
            b"REJECTD" | b"REJECTED" | b"REJECT" => ReceiptState::Rejected,
            b"ENROUTE" | b"ENROUTED" => ReceiptState::Enroute,
            _ => return None,
        })
    }
}

/// A `YYMMDDhhmm[ss]` (or `YYYYMMDDhhmmss`) date from a receipt text, in the SMSC's local
/// time: we cannot know its zone, so no conversion is attempted. Fields are range-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceiptTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: Option<u8>,
}

impl ReceiptTime {
    /// Reads the digits of `s` (separators ignored): 10 (`YYMMDDhhmm`), 12 (`YYMMDDhhmmss`) or
    /// 14 (`YYYYMMDDhhmmss`). Two-digit years are 20YY.
    pub fn parse(s: &str) -> Option<Self> {
        let mut digits = [0u8; 14];
        let mut n = 0;
        for b in s.bytes() {
            if b.is_ascii_digit() {
                if n == digits.len() {
                    return None;
                }
                digits[n] = b - b'0';
                n += 1;
            }
        }
        let two = |i: usize| digits[i] * 10 + digits[i + 1];
        let (year, rest) = match n {
            10 | 12 => (2000 + u16::from(two(0)), 2),
            14 => (u16::from(two(0)) * 100 + u16::from(two(2)), 4),
            _ => return None,
        };
        let t = ReceiptTime {
            year,
            month: two(rest),
            day: two(rest + 2),
            hour: two(rest + 4),
            minute: two(rest + 6),
            second: (n - rest > 8).then(|| two(rest + 8)),
        };
        let valid = (1..=12).contains(&t.month)
            && (1..=31).contains(&t.day)
            && t.hour < 24
            && t.minute < 60
            && t.second.is_none_or(|s| s < 61);
        valid.then_some(t)
    }
}

/// The fields of a receipt text, borrowed from it. Every field is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextFields<'a> {
    pub id: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub dlvrd: Option<&'a str>,
    pub submit_date: Option<&'a str>,
    pub done_date: Option<&'a str>,
    pub stat: Option<&'a str>,
    pub err: Option<&'a str>,
    pub text: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Sub,
    Dlvrd,
    SubmitDate,
    DoneDate,
    Stat,
    Err,
    Text,
}

/// Keys as word sequences (lower case). Two-word keys match with ' ', '_', '-' or nothing
/// between the words. Every key must be followed by optional spaces and ':'.
const KEYS: &[(Field, &[&str])] = &[
    (Field::Id, &["id"]),
    (Field::Id, &["msgid"]),
    (Field::Id, &["msg", "id"]),
    (Field::Id, &["message", "id"]),
    (Field::Sub, &["sub"]),
    (Field::Dlvrd, &["dlvrd"]),
    (Field::Dlvrd, &["dlvd"]),
    (Field::SubmitDate, &["submit", "date"]),
    (Field::DoneDate, &["done", "date"]),
    (Field::Stat, &["stat"]),
    (Field::Stat, &["status"]),
    (Field::Stat, &["state"]),
    (Field::Err, &["err"]),
    (Field::Err, &["error"]),
    (Field::Text, &["text"]),
    (Field::Text, &["txt"]),
];

/// Bound on words between two words of a key, and on spaces before ':'.
const MAX_KEY_GAP: usize = 3;

/// Tries to match a key at `at` (a word boundary); returns (field, offset after the ':').
fn match_key(b: &[u8], at: usize) -> Option<(Field, usize)> {
    'keys: for &(field, words) in KEYS {
        let mut i = at;
        for (w, word) in words.iter().enumerate() {
            if w > 0 {
                let mut gap = 0;
                while gap < MAX_KEY_GAP && matches!(b.get(i), Some(b' ' | b'_' | b'-')) {
                    i += 1;
                    gap += 1;
                }
            }
            let end = i + word.len();
            match b.get(i..end) {
                Some(s) if s.eq_ignore_ascii_case(word.as_bytes()) => i = end,
                _ => continue 'keys,
            }
        }
        let mut gap = 0;
        while gap < MAX_KEY_GAP && b.get(i) == Some(&b' ') {
            i += 1;
            gap += 1;
        }
        if b.get(i) == Some(&b':') {
            return Some((field, i + 1));
        }
    }
    None
}

/// Most keys we keep per text; later ones are part of the previous value. Bounds work on
/// hostile input to one pass plus a fixed table.
const MAX_KEYS_PER_TEXT: usize = 16;

/// Parses the text form of a receipt. Never fails: what is not found is `None`.
///
/// A value runs from its key's ':' to the next recognised key (trimmed; `,`/`;` trimmed off
/// except for `text`). A key seen a second time is ordinary content of the value before it, so
/// `text:` containing `id:` keeps its content and the real `id` is the first one.
pub fn parse_text(s: &str) -> TextFields<'_> {
    let b = s.as_bytes();
    let mut found: [(Field, usize, usize); MAX_KEYS_PER_TEXT] =
        [(Field::Id, 0, 0); MAX_KEYS_PER_TEXT];
    let mut n = 0;
    let mut seen = 0u8;
    let mut i = 0;
    while i < b.len() && n < MAX_KEYS_PER_TEXT {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if boundary
            && matches!(b[i] | 0x20, b'i' | b'm' | b's' | b'd' | b'e' | b't')
            && let Some((field, value_start)) = match_key(b, i)
        {
            let bit = 1u8 << (field as u8);
            if seen & bit == 0 {
                seen |= bit;
                found[n] = (field, i, value_start);
                n += 1;
                i = value_start;
                continue;
            }
        }
        i += 1;
    }
    let mut out = TextFields::default();
    for k in 0..n {
        let (field, _, start) = found[k];
        let end = if k + 1 < n { found[k + 1].1 } else { b.len() };
        // `start` and `end` are ASCII positions (after ':' / at a key), so char boundaries.
        let raw = &s[start..end];
        let value = if field == Field::Text {
            raw.trim()
        } else {
            raw.trim_matches(|c: char| c.is_whitespace() || c == ',' || c == ';')
        };
        let slot = match field {
            Field::Id => &mut out.id,
            Field::Sub => &mut out.sub,
            Field::Dlvrd => &mut out.dlvrd,
            Field::SubmitDate => &mut out.submit_date,
            Field::DoneDate => &mut out.done_date,
            Field::Stat => &mut out.stat,
            Field::Err => &mut out.err,
            Field::Text => &mut out.text,
        };
        *slot = Some(value);
    }
    out
}

/// The network_error_code TLV: network type (1 ANSI-136, 2 IS-95, 3 GSM, ...) and error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkError {
    pub network_type: u8,
    pub code: u16,
}

/// Where the receipted message id was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    Tlv,
    Text,
}

/// A recognised delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub kind: ReceiptKind,
    /// The SMSC message id as received (trimmed); normalise with [`normalize_id`].
    pub message_id: String,
    pub id_source: IdSource,
    /// The text's `id:` when it differs from the TLV id (some SMSCs send hex in one and
    /// decimal in the other); lets the caller try it if the TLV id matches nothing.
    pub text_message_id: Option<String>,
    /// From message_state if valid, else the `stat:` word, else `Unknown`.
    pub state: ReceiptState,
    /// The `stat:` word as received.
    pub stat_raw: Option<String>,
    /// network_error_code's code if present, else `err:` if it is a decimal number.
    pub error_code: Option<u32>,
    pub network_error: Option<NetworkError>,
    /// The `err:` value as received (may be non-numeric).
    pub err_raw: Option<String>,
    pub submitted: Option<u32>,
    pub delivered: Option<u32>,
    pub submit_date: Option<ReceiptTime>,
    pub done_date: Option<ReceiptTime>,
    /// The `text:` value (usually the first characters of the original message).
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt (esm_class type {kind:?}) carries no message id in TLV or text")]
    NoMessageId { kind: ReceiptKind },
}

/// Parsing options (per link).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptOptions {
    /// Treat a PDU whose esm_class says "normal message" as a receipt if it has a
    /// receipted_message_id TLV or a text starting with `id:`. Off by default: an MO text
    /// could start with "id:".
    pub accept_unflagged: bool,
}

/// [`parse_with`] with default options.
pub fn parse(sm: &SubmitSm) -> Result<Option<Receipt>, ReceiptError> {
    parse_with(sm, &ReceiptOptions::default())
}

/// `Ok(None)`: not a receipt (an MO message). `Err`: flagged as a receipt but unusable.
pub fn parse_with(sm: &SubmitSm, opts: &ReceiptOptions) -> Result<Option<Receipt>, ReceiptError> {
    parse_parts(
        sm.esm_class,
        sm.data_coding,
        &sm.short_message,
        &sm.tlvs,
        opts,
    )
}

/// The same, from the individual fields (e.g. of a data_sm).
pub fn parse_parts(
    esm_class: u8,
    data_coding: u8,
    short_message: &[u8],
    tlvs: &Tlvs,
    opts: &ReceiptOptions,
) -> Result<Option<Receipt>, ReceiptError> {
    let body = receipt_body(esm_class, data_coding, short_message, tlvs);
    let fields = parse_text(&body);
    let tlv_id = tlvs
        .get_cstr(tag::RECEIPTED_MESSAGE_ID)
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
        .filter(|v| !v.is_empty());

    let kind = match receipt_kind(esm_class) {
        Some(kind) => kind,
        None if opts.accept_unflagged
            && esm_class & ESM_CLASS_TYPE_MASK == 0
            && (tlv_id.is_some() || starts_with_id_key(&body)) =>
        {
            ReceiptKind::Unflagged
        }
        None => return Ok(None),
    };

    let text_id = fields.id.filter(|v| !v.is_empty()).map(str::to_owned);
    let (message_id, id_source, text_message_id) = match (tlv_id, text_id) {
        (Some(tlv), text) => {
            let text = text.filter(|t| *t != tlv);
            (tlv, IdSource::Tlv, text)
        }
        (None, Some(text)) => (text, IdSource::Text, None),
        (None, None) => return Err(ReceiptError::NoMessageId { kind }),
    };

    let state = tlvs
        .get_u8(tag::MESSAGE_STATE)
        .and_then(ReceiptState::from_message_state)
        .or_else(|| fields.stat.and_then(ReceiptState::from_stat_word))
        .unwrap_or(ReceiptState::Unknown);

    let network_error = match tlvs.get(tag::NETWORK_ERROR_CODE) {
        Some(&[network_type, hi, lo]) => Some(NetworkError {
            network_type,
            code: u16::from_be_bytes([hi, lo]),
        }),
        _ => None,
    };
    let err_numeric = fields.err.and_then(parse_decimal);
    let error_code = network_error.map(|e| u32::from(e.code)).or(err_numeric);

    Ok(Some(Receipt {
        kind,
        message_id,
        id_source,
        text_message_id,
        state,
        stat_raw: fields.stat.filter(|v| !v.is_empty()).map(str::to_owned),
        error_code,
        network_error,
        err_raw: fields.err.filter(|v| !v.is_empty()).map(str::to_owned),
        submitted: fields.sub.and_then(parse_leading_decimal),
        delivered: fields.dlvrd.and_then(parse_leading_decimal),
        submit_date: fields.submit_date.and_then(ReceiptTime::parse),
        done_date: fields.done_date.and_then(ReceiptTime::parse),
        text: fields.text.map(str::to_owned),
    }))
}

/// The receipt text: short_message (after any UDH), or message_payload if that is empty.
/// Decoded as Latin-1 (ASCII in practice) whatever the data_coding says, except UCS2:
/// SMSCs write receipt texts in ASCII even under data_coding 0, and reading them as GSM 03.38
/// would turn `_` and `@` in ids into other characters.
fn receipt_body<'a>(
    esm_class: u8,
    data_coding: u8,
    short_message: &'a [u8],
    tlvs: &'a Tlvs,
) -> Cow<'a, str> {
    let mut bytes = short_message;
    if esm_class & ESM_CLASS_UDHI != 0
        && let Some((udh_octets, _)) = parse_udh(bytes)
    {
        bytes = &bytes[udh_octets..];
    }
    if bytes.is_empty() {
        bytes = tlvs.get(tag::MESSAGE_PAYLOAD).unwrap_or(&[]);
    }
    if data_coding == text::data_coding::UCS2 {
        return Cow::Owned(text::decode_ucs2(bytes));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if bytes.is_ascii() => Cow::Borrowed(s),
        _ => Cow::Owned(text::decode_latin1(bytes)),
    }
}

fn starts_with_id_key(body: &str) -> bool {
    let t = body.trim_start().as_bytes();
    matches!(match_key(t, 0), Some((Field::Id, _)))
}

/// The whole value as a decimal number (leading zeros allowed).
fn parse_decimal(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The leading digits of the value ("001", "1 of 1" -> 1).
fn parse_leading_decimal(v: &str) -> Option<u32> {
    let end = v
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    v[..end].parse().ok()
}

/// The fields of a standard receipt text, for [`format_text`].
#[derive(Debug, Clone, Copy)]
pub struct TextReceipt<'a> {
    pub id: &'a str,
    pub submitted: u32,
    pub delivered: u32,
    /// `YYMMDDhhmm`, supplied by the caller (this module reads no clock).
    pub submit_date: &'a str,
    pub done_date: &'a str,
    pub state: ReceiptState,
    pub err: u32,
    /// Cut to its first 20 characters.
    pub text: &'a str,
}

/// Formats the standard (Appendix B) receipt text, e.g. for the SMSC simulator.
pub fn format_text(r: &TextReceipt<'_>) -> String {
    let text: String = r.text.chars().take(20).collect();
    format!(
        "id:{} sub:{:03} dlvrd:{:03} submit date:{} done date:{} stat:{} err:{:03} text:{text}",
        r.id,
        r.submitted,
        r.delivered,
        r.submit_date,
        r.done_date,
        r.state.stat_word(),
        r.err,
    )
}

// ---------------------------------------------------------------------------------------------
// Message id normalisation

/// How a link writes message ids (configured separately for submit_sm_resp and receipts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdFormat {
    /// An opaque string.
    #[default]
    AsIs,
    /// A hexadecimal number (optional `0x`, any case, any leading zeros).
    Hex,
    /// A decimal number (any leading zeros).
    Decimal,
}

impl std::str::FromStr for IdFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "as_is" | "asis" | "string" | "raw" => Ok(IdFormat::AsIs),
            "hex" | "hexadecimal" => Ok(IdFormat::Hex),
            "dec" | "decimal" => Ok(IdFormat::Decimal),
            other => Err(format!(
                "unknown message id format {other:?} (expected as_is, hex or decimal)"
            )),
        }
    }
}

/// The canonical form of a message id, so that ids of the same message compare equal even when
/// submit_sm_resp and the receipt write them differently.
///
/// Canonical form:
/// - `Hex` / `Decimal`: the decimal digits of the numeric value, without leading zeros
///   ("0" for zero). Hex "0A1B2C3D" and decimal "169552957" both give "169552957". Any length
///   is handled (message ids are up to 64 octets).
/// - `AsIs`: trimmed and ASCII-lowercased.
/// - A value that is not a valid number of its declared format (misconfiguration, or an SMSC
///   that changed its mind) falls back to the `AsIs` form rather than failing, so it can still
///   match an id sent the same way.
///
/// Whitespace and NULs around the id are ignored in every format.
pub fn normalize_id(raw: &str, fmt: IdFormat) -> String {
    let id = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    match fmt {
        IdFormat::AsIs => id.to_ascii_lowercase(),
        IdFormat::Decimal => {
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                let digits = id.trim_start_matches('0');
                if digits.is_empty() { "0" } else { digits }.to_owned()
            } else {
                id.to_ascii_lowercase()
            }
        }
        IdFormat::Hex => {
            let digits = id
                .strip_prefix("0x")
                .or_else(|| id.strip_prefix("0X"))
                .unwrap_or(id);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex_to_decimal(digits)
            } else {
                id.to_ascii_lowercase()
            }
        }
    }
}

/// Decimal string of a hex digit string (validated by the caller) of any length.
fn hex_to_decimal(hex: &str) -> String {
    let hex = hex.trim_start_matches('0');
    if hex.len() <= 32 {
        // Fast path: fits u128 (the digits were validated, so this cannot fail).
        return u128::from_str_radix(if hex.is_empty() { "0" } else { hex }, 16)
            .map(|v| v.to_string())
            .unwrap_or_default();
    }
    // Little-endian base-1e9 limbs: limbs = limbs * 16 + digit, per hex digit.
    const BASE: u64 = 1_000_000_000;
    let mut limbs: Vec<u32> = vec![0];
    for b in hex.bytes() {
        let mut carry = u64::from((b as char).to_digit(16).unwrap_or(0));
        for limb in limbs.iter_mut() {
            let v = u64::from(*limb) * 16 + carry;
            *limb = (v % BASE) as u32;
            carry = v / BASE;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut out = String::with_capacity(limbs.len() * 9);
    let mut iter = limbs.iter().rev();
    if let Some(first) = iter.next() {
        out.push_str(&first.to_string());
    }
    for limb in iter {
        out.push_str(&format!("{limb:09}"));
    }
    out
}

/// A link's id formats for submit_sm_resp and for receipts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdFormats {
    pub submit_resp: IdFormat,
    pub receipt: IdFormat,
}

impl IdFormats {
    /// Canonical key of an id from submit_sm_resp.
    pub fn resp_key(&self, raw: &str) -> String {
        normalize_id(raw, self.submit_resp)
    }

    /// Canonical key of an id from a receipt.
    pub fn receipt_key(&self, raw: &str) -> String {
        normalize_id(raw, self.receipt)
    }
}

#[cfg(test)]
mod tests {}
