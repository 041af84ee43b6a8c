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
mod tests {
    use super::*;
    use crate::smpp::segment::{SegmentConfig, SegmentMode, segment_with_reference};
    use proptest::prelude::*;

    fn dlr(text: &str) -> SubmitSm {
        SubmitSm {
            esm_class: 0x04,
            short_message: text.as_bytes().to_vec(),
            ..SubmitSm::default()
        }
    }

    fn parsed(text: &str) -> Receipt {
        parse(&dlr(text)).unwrap().unwrap()
    }

    #[test]
    fn standard_text() {
        let r = parsed(
            "id:0123456789 sub:001 dlvrd:001 submit date:2301011200 done date:2301011205 \
             stat:DELIVRD err:000 text:Hello world",
        );
        assert_eq!(r.kind, ReceiptKind::SmscDeliveryReceipt);
        assert_eq!(r.message_id, "0123456789");
        assert_eq!(r.id_source, IdSource::Text);
        assert_eq!(r.state, ReceiptState::Delivered);
        assert!(r.state.is_final());
        assert_eq!((r.submitted, r.delivered), (Some(1), Some(1)));
        assert_eq!(r.error_code, Some(0));
        assert_eq!(r.err_raw.as_deref(), Some("000"));
        assert_eq!(
            r.submit_date,
            Some(ReceiptTime {
                year: 2023,
                month: 1,
                day: 1,
                hour: 12,
                minute: 0,
                second: None
            })
        );
        assert_eq!(r.done_date.unwrap().minute, 5);
        assert_eq!(r.text.as_deref(), Some("Hello world"));
    }

    /// Real-world shapes (constructed here): (text, id, state, err code, err raw).
    #[test]
    fn non_standard_texts() {
        type Case<'a> = (&'a str, &'a str, ReceiptState, Option<u32>, Option<&'a str>);
        let cases: &[Case] = &[
            // any case, extra spaces, seconds in dates, long stat word
            (
                "ID: abc123  Sub: 1 Dlvrd: 1  Submit Date: 230101120000  Done Date: 230101120500 Stat: delivered Err: 0 Text: hi",
                "abc123",
                ReceiptState::Delivered,
                Some(0),
                Some("0"),
            ),
            // missing fields
            (
                "id:77 stat:UNDELIV",
                "77",
                ReceiptState::Undeliverable,
                None,
                None,
            ),
            // other order, non-numeric err
            (
                "stat:EXPIRED err:ABC id:5 done date:2301011200 text:x",
                "5",
                ReceiptState::Expired,
                None,
                Some("ABC"),
            ),
            // underscores in keys, hex-looking err
            (
                "id:1 submit_date:2301011200 done_date:2301011300 stat:REJECTD err:0x0B",
                "1",
                ReceiptState::Rejected,
                None,
                Some("0x0B"),
            ),
            // commas between fields, long stat word
            (
                "id:1f2e,sub:001,dlvrd:000,stat:UNDELIVERABLE,err:034",
                "1f2e",
                ReceiptState::Undeliverable,
                Some(34),
                Some("034"),
            ),
            // no separator in two-word keys, "status", "error"
            (
                "id:9 submitdate:2301011200 donedate:2301011201 status:ACCEPTD error:12",
                "9",
                ReceiptState::Accepted,
                Some(12),
                Some("12"),
            ),
            // leading garbage and a trailing newline
            (
                "\r\n id:X-1_2 stat:ENROUTE\r\n",
                "X-1_2",
                ReceiptState::Enroute,
                None,
                None,
            ),
            // numeric stat
            ("id:3 stat:2", "3", ReceiptState::Delivered, None, None),
            // unknown stat word -> Unknown, raw kept
            ("id:4 stat:WHATEVER", "4", ReceiptState::Unknown, None, None),
            // "msgid" key and "FAILED"
            (
                "msgid:44 stat:FAILED err:1",
                "44",
                ReceiptState::Undeliverable,
                Some(1),
                Some("1"),
            ),
        ];
        for &(text, id, state, code, raw) in cases {
            let r = parsed(text);
            assert_eq!(r.message_id, id, "{text:?}");
            assert_eq!(r.state, state, "{text:?}");
            assert_eq!(r.error_code, code, "{text:?}");
            assert_eq!(r.err_raw.as_deref(), raw, "{text:?}");
        }
        assert_eq!(
            parsed("id:4 stat:WHATEVER").stat_raw.as_deref(),
            Some("WHATEVER")
        );
        let r = parsed("id:9 submitdate:2301011200 donedate:2301011201 status:ACCEPTD");
        assert!(r.submit_date.is_some() && r.done_date.is_some());
        assert!(!r.state.is_final(), "ACCEPTD is treated as intermediate");
    }

    #[test]
    fn text_field_keeps_embedded_keys() {
        let r = parsed("id:100 stat:DELIVRD err:000 text:your id: 55 stat: ok");
        assert_eq!(r.message_id, "100");
        assert_eq!(r.state, ReceiptState::Delivered);
        assert_eq!(r.text.as_deref(), Some("your id: 55 stat: ok"));
        // Keys must start at a word boundary: "paid:" is not "id:".
        let f = parse_text("paid:1 id:2");
        assert_eq!(f.id, Some("2"));
    }

    #[test]
    fn text_in_message_payload_and_ucs2() {
        let mut sm = dlr("");
        sm.tlvs
            .push(tag::MESSAGE_PAYLOAD, b"id:55 stat:DELETED err:0")
            .unwrap();
        let r = parse(&sm).unwrap().unwrap();
        assert_eq!(
            (r.message_id.as_str(), r.state),
            ("55", ReceiptState::Deleted)
        );

        let mut sm = dlr("");
        sm.data_coding = 8;
        sm.short_message = text::encode("id:56 stat:EXPIRED", text::Encoding::Ucs2).unwrap();
        let r = parse(&sm).unwrap().unwrap();
        assert_eq!(
            (r.message_id.as_str(), r.state),
            ("56", ReceiptState::Expired)
        );
    }

    #[test]
    fn tlvs_are_preferred() {
        let mut sm = dlr("id:169552957 stat:DELIVRD err:000");
        sm.tlvs
            .push_cstr(tag::RECEIPTED_MESSAGE_ID, b"0A1B2C3D")
            .unwrap();
        sm.tlvs.push_u8(tag::MESSAGE_STATE, 5);
        sm.tlvs
            .push(tag::NETWORK_ERROR_CODE, &[3, 0x00, 0x22])
            .unwrap();
        let r = parse(&sm).unwrap().unwrap();
        assert_eq!(r.message_id, "0A1B2C3D");
        assert_eq!(r.id_source, IdSource::Tlv);
        assert_eq!(r.text_message_id.as_deref(), Some("169552957"));
        assert_eq!(r.state, ReceiptState::Undeliverable);
        assert_eq!(
            r.network_error,
            Some(NetworkError {
                network_type: 3,
                code: 0x22
            })
        );
        assert_eq!(r.error_code, Some(0x22));
        // The two ids are the same message once normalised per their formats.
        assert_eq!(
            normalize_id(&r.message_id, IdFormat::Hex),
            normalize_id(r.text_message_id.as_deref().unwrap(), IdFormat::Decimal)
        );

        // TLV-only receipt; invalid message_state falls back to text (none) -> Unknown.
        let mut sm = dlr("");
        sm.tlvs
            .push_cstr(tag::RECEIPTED_MESSAGE_ID, b" abc ")
            .unwrap();
        sm.tlvs.push_u8(tag::MESSAGE_STATE, 0);
        sm.tlvs.push(tag::NETWORK_ERROR_CODE, &[3, 0]).unwrap(); // wrong length: ignored
        let r = parse(&sm).unwrap().unwrap();
        assert_eq!(r.message_id, "abc");
        assert_eq!(r.state, ReceiptState::Unknown);
        assert_eq!(r.network_error, None);
    }

    #[test]
    fn recognition_by_esm_class() {
        let mut sm = dlr("id:1 stat:ENROUTE");
        sm.esm_class = 0x00;
        assert_eq!(parse(&sm).unwrap(), None, "an MO message is not a receipt");
        let opts = ReceiptOptions {
            accept_unflagged: true,
        };
        let r = parse_with(&sm, &opts).unwrap().unwrap();
        assert_eq!(r.kind, ReceiptKind::Unflagged);
        sm.short_message = b"hello id:1".to_vec();
        assert_eq!(parse_with(&sm, &opts).unwrap(), None);

        for (esm, kind) in [
            (0x04, ReceiptKind::SmscDeliveryReceipt),
            (0x08, ReceiptKind::SmeDeliveryAck),
            (0x10, ReceiptKind::SmeManualAck),
            (0x20, ReceiptKind::IntermediateNotification),
            (0x04 | 0x03, ReceiptKind::SmscDeliveryReceipt), // messaging-mode bits ignored
        ] {
            let mut sm = dlr("id:1 stat:ENROUTE");
            sm.esm_class = esm;
            assert_eq!(parse(&sm).unwrap().unwrap().kind, kind);
        }
        let mut sm = dlr("id:1");
        sm.esm_class = 0x18; // conversation abort
        assert_eq!(parse(&sm).unwrap(), None);

        let sm = dlr("stat:DELIVRD");
        assert_eq!(
            parse(&sm),
            Err(ReceiptError::NoMessageId {
                kind: ReceiptKind::SmscDeliveryReceipt
            })
        );
    }

    #[test]
    fn receipt_with_udh_is_stripped() {
        let mut sm = dlr("");
        sm.esm_class = 0x04 | 0x40;
        sm.short_message = [&[5u8, 0, 3, 1, 1, 1][..], b"id:9 stat:DELIVRD"].concat();
        assert_eq!(parse(&sm).unwrap().unwrap().message_id, "9");
    }

    #[test]
    fn stat_words() {
        for state in [
            ReceiptState::Enroute,
            ReceiptState::Delivered,
            ReceiptState::Expired,
            ReceiptState::Deleted,
            ReceiptState::Undeliverable,
            ReceiptState::Accepted,
            ReceiptState::Unknown,
            ReceiptState::Rejected,
        ] {
            assert_eq!(ReceiptState::from_stat_word(state.stat_word()), Some(state));
            assert_eq!(
                ReceiptState::from_message_state(state.message_state()),
                Some(state)
            );
        }
        assert_eq!(
            ReceiptState::from_stat_word("en_route"),
            Some(ReceiptState::Enroute)
        );
        assert_eq!(
            ReceiptState::from_stat_word("DELIVRD."),
            Some(ReceiptState::Delivered)
        );
        assert_eq!(ReceiptState::from_stat_word(""), None);
        assert_eq!(ReceiptState::from_stat_word("X".repeat(100).as_str()), None);
        assert_eq!(ReceiptState::from_message_state(9), None);
    }

    #[test]
    fn receipt_times() {
        let t = ReceiptTime::parse("2312312359").unwrap();
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2023, 12, 31, 23, 59)
        );
        assert_eq!(ReceiptTime::parse("231231235959").unwrap().second, Some(59));
        assert_eq!(ReceiptTime::parse("20231231235959").unwrap().year, 2023);
        assert_eq!(
            ReceiptTime::parse("2023-12-31 23:59:59").unwrap().second,
            Some(59)
        );
        assert_eq!(ReceiptTime::parse("2313312359"), None, "month 13");
        assert_eq!(ReceiptTime::parse("23123123"), None, "too short");
        assert_eq!(ReceiptTime::parse("9".repeat(40).as_str()), None);
    }

    #[test]
    fn formatted_text_parses_back() {
        let s = format_text(&TextReceipt {
            id: "abc",
            submitted: 1,
            delivered: 1,
            submit_date: "2401021530",
            done_date: "2401021531",
            state: ReceiptState::Delivered,
            err: 0,
            text: "a long original text that is cut",
        });
        assert_eq!(
            s,
            "id:abc sub:001 dlvrd:001 submit date:2401021530 done date:2401021531 stat:DELIVRD err:000 text:a long original text"
        );
        let r = parsed(&s);
        assert_eq!(
            (r.message_id.as_str(), r.state),
            ("abc", ReceiptState::Delivered)
        );
    }

    #[test]
    fn id_normalisation_table() {
        use IdFormat::*;
        let cases = [
            ("0A1B2C3D", Hex, "169552957"),
            ("0a1b2c3d", Hex, "169552957"),
            ("0x0A1B2C3D", Hex, "169552957"),
            ("  169552957 ", Decimal, "169552957"),
            ("000169552957", Decimal, "169552957"),
            ("0000", Decimal, "0"),
            ("0", Hex, "0"),
            ("ABC-def\0", AsIs, "abc-def"),
            ("not-hex", Hex, "not-hex"),
            ("12ab", Decimal, "12ab"),
            (
                "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
                Hex,
                "87112285931760246646623899502532662132735",
            ),
            (
                "00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab00ab",
                Hex,
                "302135458298330196344405866124752151413888263947883366914583762346122608811",
            ),
        ];
        for (raw, fmt, want) in cases {
            assert_eq!(normalize_id(raw, fmt), want, "{raw:?} {fmt:?}");
        }
        let formats = IdFormats {
            submit_resp: Hex,
            receipt: Decimal,
        };
        assert_eq!(
            formats.resp_key("0A1B2C3D"),
            formats.receipt_key("0169552957")
        );
        assert_eq!("decimal".parse::<IdFormat>(), Ok(Decimal));
        assert!("octal".parse::<IdFormat>().is_err());
    }

    /// A 3-part message: each part gets its own SMSC id (hex in submit_sm_resp); the receipts
    /// arrive in another order with decimal ids, and each maps back to its own part.
    #[test]
    fn multipart_receipts_map_per_part() {
        let cfg = SegmentConfig::with_mode(SegmentMode::Udh8);
        let out = segment_with_reference(&"q".repeat(400), None, &cfg, 5).unwrap();
        assert_eq!(out.parts.len(), 3);
        let formats = IdFormats {
            submit_resp: IdFormat::Hex,
            receipt: IdFormat::Decimal,
        };
        let resp_ids = ["00FF01", "00ff02", "FF03"];
        let by_key: std::collections::HashMap<String, u8> = out
            .parts
            .iter()
            .zip(resp_ids)
            .map(|(p, id)| (formats.resp_key(id), p.seq))
            .collect();
        assert_eq!(by_key.len(), 3);
        let receipts = [
            (
                "id:65283 stat:UNDELIV err:001",
                3,
                ReceiptState::Undeliverable,
            ),
            ("id:65281 stat:DELIVRD err:000", 1, ReceiptState::Delivered),
            (
                "id:0065282 stat:DELIVRD err:000",
                2,
                ReceiptState::Delivered,
            ),
        ];
        for (text, seq, state) in receipts {
            let r = parsed(text);
            assert_eq!(by_key.get(&formats.receipt_key(&r.message_id)), Some(&seq));
            assert_eq!(r.state, state);
        }
    }

    proptest! {
        #[test]
        fn hex_and_decimal_forms_of_one_value_agree(v in any::<u128>(), zeros in 0usize..5, upper in any::<bool>()) {
            let hex = if upper { format!("{v:X}") } else { format!("{v:x}") };
            let hex = "0".repeat(zeros) + &hex;
            let dec = "0".repeat(zeros) + &v.to_string();
            prop_assert_eq!(normalize_id(&hex, IdFormat::Hex), v.to_string());
            prop_assert_eq!(normalize_id(&dec, IdFormat::Decimal), v.to_string());
        }

        #[test]
        fn big_hex_path_matches_u128(v in any::<u128>()) {
            // 33 significant digits take the limb path: 2^128 + v.
            let hex = format!("1{v:032x}");
            let want = primitive_big(v);
            prop_assert_eq!(normalize_id(&hex, IdFormat::Hex), want);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300), esm in any::<u8>(), dc in any::<u8>()) {
            let _ = parse_text(&s);
            let mut tlvs = Tlvs::new();
            tlvs.push(tag::RECEIPTED_MESSAGE_ID, &bytes[..bytes.len().min(70)]).unwrap();
            let _ = parse_parts(esm, dc, &bytes, &tlvs, &ReceiptOptions { accept_unflagged: true });
            let _ = parse_parts(esm, dc, &bytes, &Tlvs::new(), &ReceiptOptions::default());
            let _ = normalize_id(&s, IdFormat::Hex);
        }

        #[test]
        fn key_soup_never_panics(parts in proptest::collection::vec(proptest::sample::select(vec![
            "id:", "ID :", "sub:", "submit date:", "done_date :", "stat:", "err:", "text:", " ", "x", "é", ",", "😀", "1",
        ]), 0..60)) {
            let s: String = parts.concat();
            let f = parse_text(&s);
            for v in [f.id, f.sub, f.dlvrd, f.submit_date, f.done_date, f.stat, f.err, f.text].into_iter().flatten() {
                prop_assert!(s.contains(v));
            }
        }
    }

    /// 2^128 + v as a decimal string, computed independently in base 1e19.
    fn primitive_big(v: u128) -> String {
        const BASE: u128 = 10_000_000_000_000_000_000; // 1e19
        const TWO128_HI: u128 = 34_028_236_692_093_846_346; // 2^128 / 1e19
        const TWO128_LO: u128 = 3_374_607_431_768_211_456; // 2^128 % 1e19
        let lo = TWO128_LO + v % BASE;
        let hi = TWO128_HI + v / BASE + lo / BASE;
        format!("{hi}{:019}", lo % BASE)
    }
}
