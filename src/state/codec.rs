//! Compact binary encoding of records and keys for the embedded backend.
//!
//! Why not serde_json: `perf/benches/state.rs` measures both; the hand-written form is several
//! times faster to encode and decode and about half the size, and the writer thread does one
//! decode + one encode per op. The layout is versioned by its first byte.
//!
//! Integers are LEB128 varints unless a fixed width is needed for ordering or for the
//! compaction filter (which reads `expires_at_ms` at a fixed offset without decoding).
//!
//! Versions: [`RECORD_FORMAT_V1`] (no hand-over mark) is still decoded, with `handed_at_ms =
//! Some(LEGACY_HANDED_AT_MS)` (crash recovery must not read an old record as "never sent");
//! [`RECORD_FORMAT_V2`] (written now) appends `handed_at_ms` after the parts. The expiry
//! stays at the same fixed offset in both.

use super::model::{
    Encoding, LEGACY_HANDED_AT_MS, MAX_PARTS, MessageKey, MessageRecord, PartRecord, ReceiptInfo,
    Status,
};

/// First byte of a record value written before the hand-over mark existed (decode only).
pub const RECORD_FORMAT_V1: u8 = 1;

/// First byte of every record value written now: V1 + `handed_at_ms` after the parts.
pub const RECORD_FORMAT_V2: u8 = 2;

/// First byte of a record value of the journal backend ([`super::journal`]): V2 + the record's
/// version (a varint after `handed_at_ms`), which orders its images across the shard logs.
pub const RECORD_FORMAT_V3: u8 = 3;

/// Offset of the big-endian `expires_at_ms` in a record value.
pub const RECORD_EXPIRY_OFFSET: usize = 1;

/// Message key: `app_id` (u64 BE) ++ transaction id bytes. The fixed-width prefix makes the
/// concatenation unambiguous without a separator.
pub fn msg_key(app_id: u64, transaction_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + transaction_id.len());
    k.extend_from_slice(&app_id.to_be_bytes());
    k.extend_from_slice(transaction_id.as_bytes());
    k
}

/// Inverse of [`msg_key`].
pub fn parse_msg_key(k: &[u8]) -> Result<MessageKey, String> {
    let (app, tx) = k.split_first_chunk::<8>().ok_or("message key too short")?;
    let tx = std::str::from_utf8(tx).map_err(|_| "transaction id is not UTF-8")?;
    Ok(MessageKey::new(u64::from_be_bytes(*app), tx))
}

/// Receipt index key: `link_id` (u32 BE) ++ normalised SMSC id bytes.
pub fn smsc_key(link_id: u32, smsc_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + smsc_id.len());
    put_smsc_key(&mut k, link_id, smsc_id);
    k
}

/// Appends [`smsc_key`]'s bytes to `out` (a checkpoint builds all of its entries in one
/// buffer instead of two allocations each).
pub fn put_smsc_key(out: &mut Vec<u8>, link_id: u32, smsc_id: &str) {
    out.extend_from_slice(&link_id.to_be_bytes());
    out.extend_from_slice(smsc_id.as_bytes());
}

/// Receipt index value: `expires_at_ms` (u64 BE) ++ `part` (u16 BE) ++ message key.
pub fn smsc_value(expires_at_ms: u64, part: u16, msg_key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + msg_key.len());
    put_smsc_value(&mut v, expires_at_ms, part, msg_key);
    v
}

/// Appends [`smsc_value`]'s bytes to `out`.
pub fn put_smsc_value(out: &mut Vec<u8>, expires_at_ms: u64, part: u16, msg_key: &[u8]) {
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(&part.to_be_bytes());
    out.extend_from_slice(msg_key);
}

/// Inverse of [`smsc_value`]: `(expires_at_ms, part, message key bytes)`.
pub fn parse_smsc_value(v: &[u8]) -> Result<(u64, u16, &[u8]), String> {
    let (exp, rest) = v
        .split_first_chunk::<8>()
        .ok_or("smsc index value too short")?;
    let (part, key) = rest
        .split_first_chunk::<2>()
        .ok_or("smsc index value too short")?;
    Ok((u64::from_be_bytes(*exp), u16::from_be_bytes(*part), key))
}

/// Non-final index key: `expires_at_ms` (u64 BE) ++ message key, so the index is ordered by
/// expiry (the sweep reads a prefix range; the scan skips the expired head).
pub fn open_key(expires_at_ms: u64, msg_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + msg_key.len());
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(msg_key);
    k
}

/// Reads the leading big-endian u64 of a key or value (expiry), if present.
pub fn be_u64_at(b: &[u8], offset: usize) -> Option<u64> {
    let s = b.get(offset..offset + 8)?;
    let arr: [u8; 8] = s.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_opt_var(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_var(out, v);
        }
    }
}

/// Encodes the record's value (key fields live in the key).
pub fn encode_record(r: &MessageRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_into(&mut out, r, None);
    out
}

/// Encodes the record with its version ([`RECORD_FORMAT_V3`], the journal backend's form),
/// appended to `out`.
pub fn encode_versioned_into(out: &mut Vec<u8>, r: &MessageRecord, version: u64) {
    encode_record_into(out, r, Some(version));
}

fn encode_record_into(out: &mut Vec<u8>, r: &MessageRecord, version: Option<u64>) {
    let text_len = r.text.as_ref().map_or(0, String::len);
    out.reserve(64 + text_len + r.parts.len() * 32);
    out.push(if version.is_some() {
        RECORD_FORMAT_V3
    } else {
        RECORD_FORMAT_V2
    });
    out.extend_from_slice(&r.expires_at_ms.to_be_bytes());
    put_var(out, u64::from(r.esme));
    put_opt_var(out, r.link_id.map(u64::from));
    put_str(out, &r.source);
    put_str(out, &r.destination);
    out.push(r.status.code());
    out.push(r.encoding.code());
    put_opt_str(out, r.text.as_deref());
    put_var(out, r.created_at_ms);
    put_var(out, r.updated_at_ms);
    put_opt_str(out, r.callback_url.as_deref());
    put_var(out, r.parts.len() as u64);
    for p in &r.parts {
        out.push(p.status.code());
        put_opt_var(out, p.link_id.map(u64::from));
        put_opt_str(out, p.smsc_message_id.as_deref());
        put_opt_var(out, p.error_code.map(u64::from));
        put_opt_var(out, p.submitted_at_ms);
        match &p.receipt {
            None => out.push(0),
            Some(rc) => {
                out.push(1);
                out.push(rc.status.code());
                put_str(out, &rc.stat);
                put_opt_str(out, rc.err.as_deref());
                put_opt_var(out, rc.done_at_ms);
                put_var(out, rc.received_at_ms);
            }
        }
    }
    put_opt_var(out, r.handed_at_ms);
    if let Some(v) = version {
        put_var(out, v);
    }
}

/// Cursor over an encoded value; every read is bounds-checked (corrupt input → error).
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, String> {
        let (&v, rest) = self.b.split_first().ok_or("truncated record")?;
        self.b = rest;
        Ok(v)
    }

    fn var(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn var_u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.var()?).map_err(|_| "value out of u32 range".to_string())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err("truncated record".into());
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn str(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.var()?).map_err(|_| "length overflow")?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(format!("bad option flag {f}")),
        }
    }

    fn opt_str(&mut self) -> Result<Option<String>, String> {
        if self.flag()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_var(&mut self) -> Result<Option<u64>, String> {
        if self.flag()? {
            self.var().map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_var_u32(&mut self) -> Result<Option<u32>, String> {
        if self.flag()? {
            self.var_u32().map(Some)
        } else {
            Ok(None)
        }
    }

    fn status(&mut self) -> Result<Status, String> {
        let c = self.u8()?;
        Status::from_code(c).ok_or_else(|| format!("bad status code {c}"))
    }
}

/// Decodes a record from its key and value (any format).
pub fn decode_record(key: &MessageKey, v: &[u8]) -> Result<MessageRecord, String> {
    decode_versioned(key, v).map(|(r, _)| r)
}

/// Decodes a record and its version: the stored one for [`RECORD_FORMAT_V3`], 0 for the older
/// formats (a record written by the fjall-writer backend is older than any journal image).
pub fn decode_versioned(key: &MessageKey, v: &[u8]) -> Result<(MessageRecord, u64), String> {
    let mut r = Reader { b: v };
    let version = r.u8()?;
    if !(RECORD_FORMAT_V1..=RECORD_FORMAT_V3).contains(&version) {
        return Err(format!("unknown record format {version}"));
    }
    let exp: [u8; 8] = r.bytes(8)?.try_into().map_err(|_| "truncated record")?;
    let expires_at_ms = u64::from_be_bytes(exp);
    let esme = r.var_u32()?;
    let link_id = r.opt_var_u32()?;
    let source = r.str()?;
    let destination = r.str()?;
    let status = r.status()?;
    let enc = r.u8()?;
    let encoding = Encoding::from_code(enc).ok_or_else(|| format!("bad encoding code {enc}"))?;
    let text = r.opt_str()?;
    let created_at_ms = r.var()?;
    let updated_at_ms = r.var()?;
    let callback_url = r.opt_str()?;
    let n = usize::try_from(r.var()?).map_err(|_| "part count overflow")?;
    if n > MAX_PARTS {
        return Err(format!("part count {n} over {MAX_PARTS}"));
    }
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let status = r.status()?;
        let link_id = r.opt_var_u32()?;
        let smsc_message_id = r.opt_str()?;
        let error_code = r.opt_var_u32()?;
        let submitted_at_ms = r.opt_var()?;
        let receipt = if r.flag()? {
            Some(ReceiptInfo {
                status: r.status()?,
                stat: r.str()?,
                err: r.opt_str()?,
                done_at_ms: r.opt_var()?,
                received_at_ms: r.var()?,
            })
        } else {
            None
        };
        parts.push(PartRecord {
            // n <= MAX_PARTS (255) so the index fits.
            index: u16::try_from(i).map_err(|_| "part index overflow")?,
            status,
            link_id,
            smsc_message_id,
            error_code,
            submitted_at_ms,
            receipt,
        });
    }
    let handed_at_ms = if version == RECORD_FORMAT_V1 {
        Some(LEGACY_HANDED_AT_MS)
    } else {
        r.opt_var()?
    };
    let record_version = if version == RECORD_FORMAT_V3 {
        r.var()?
    } else {
        0
    };
    if !r.b.is_empty() {
        return Err("trailing bytes after record".into());
    }
    Ok((
        MessageRecord {
            app_id: key.app_id,
            transaction_id: key.transaction_id.clone(),
            esme,
            link_id,
            source,
            destination,
            status,
            encoding,
            text,
            parts,
            created_at_ms,
            updated_at_ms,
            expires_at_ms,
            callback_url,
            handed_at_ms,
        },
        record_version,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::PartUpdate;
    use proptest::prelude::*;

    fn sample() -> MessageRecord {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(u64::MAX, "tx-ü"),
            u32::MAX,
            "Sender",
            "+4512345678",
            Encoding::Ucs2,
            "héllo",
            3,
            1_700_000_000_000,
        );
        r.expires_at_ms = 1_700_086_400_000;
        r.callback_url = Some("http://127.0.0.1/cb".into());
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 9,
                smsc_message_id: "abc".into(),
            },
            1_700_000_000_100,
        );
        r.apply_receipt(
            0,
            &ReceiptInfo {
                status: Status::Delivered,
                stat: "DELIVRD".into(),
                err: Some("000".into()),
                done_at_ms: Some(1),
                received_at_ms: 2,
            },
            3,
        );
        r.apply(
            &PartUpdate::Final {
                index: 1,
                status: Status::Rejected,
                error_code: Some(0x58),
            },
            4,
        );
        r
    }

    #[test]
    fn record_round_trips() {
        let r = sample();
        let v = encode_record(&r);
        assert_eq!(be_u64_at(&v, RECORD_EXPIRY_OFFSET), Some(r.expires_at_ms));
        assert_eq!(decode_record(&r.key(), &v).unwrap(), r);
    }

    #[test]
    fn versioned_record_round_trips_and_older_formats_read_as_version_0() {
        let r = sample();
        let mut v = Vec::new();
        encode_versioned_into(&mut v, &r, 300);
        assert_eq!(v[0], RECORD_FORMAT_V3);
        // The compaction filter reads the expiry at the same offset in every format.
        assert_eq!(be_u64_at(&v, RECORD_EXPIRY_OFFSET), Some(r.expires_at_ms));
        assert_eq!(decode_versioned(&r.key(), &v), Ok((r.clone(), 300)));
        assert_eq!(decode_record(&r.key(), &v), Ok(r.clone()));
        assert_eq!(
            decode_versioned(&r.key(), &encode_record(&r)),
            Ok((r.clone(), 0))
        );
        // A V3 value cut before its version is corrupt, not version 0.
        assert!(decode_versioned(&r.key(), &v[..v.len() - 2]).is_err());
    }

    #[test]
    fn hand_over_mark_round_trips() {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(3, "h"),
            1,
            "S",
            "+1",
            Encoding::Gsm7,
            "x",
            1,
            10,
        );
        assert_eq!(decode_record(&r.key(), &encode_record(&r)).unwrap(), r);
        assert!(r.apply(&PartUpdate::Handed, 11));
        assert_eq!(r.handed_at_ms, Some(11));
        assert_eq!(decode_record(&r.key(), &encode_record(&r)).unwrap(), r);
    }

    /// A value written by the V1 encoder (before the mark existed; bytes as it produced them)
    /// still decodes, and reads as "handed at an unknown time", never as "never sent".
    #[test]
    fn v1_records_decode_as_handed() {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(3, "old"),
            5,
            "S",
            "+1",
            Encoding::Gsm7,
            "hi",
            1,
            300,
        );
        r.expires_at_ms = 1000;
        let v1: Vec<u8> = [
            &[RECORD_FORMAT_V1][..],
            &1000u64.to_be_bytes(),
            &[5, 0, 1, b'S', 2, b'+', b'1', 0, 0, 1, 2, b'h', b'i'],
            &[0xac, 0x02, 0xac, 0x02, 0, 1],
            &[0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let d = decode_record(&r.key(), &v1).unwrap();
        r.handed_at_ms = Some(LEGACY_HANDED_AT_MS);
        assert_eq!(d, r);
        // The same record re-encoded is V2 and keeps the legacy mark.
        let v2 = encode_record(&d);
        assert_eq!(v2[0], RECORD_FORMAT_V2);
        assert_eq!(decode_record(&r.key(), &v2).unwrap(), d);
    }

    #[test]
    fn keys_round_trip() {
        let k = msg_key(7, "abc");
        assert_eq!(parse_msg_key(&k).unwrap(), MessageKey::new(7, "abc"));
        assert!(parse_msg_key(&[1, 2]).is_err());
        let v = smsc_value(5, 2, &k);
        assert_eq!(parse_smsc_value(&v).unwrap(), (5, 2, &k[..]));
        assert!(parse_smsc_value(&v[..9]).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let r = sample();
        let v = encode_record(&r);
        for n in 0..v.len() {
            assert!(decode_record(&r.key(), &v[..n]).is_err(), "prefix {n}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_record(&r.key(), &longer).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&MessageKey::new(1, "x"), &bytes);
        }
    }
}
