//! Callback signatures: HMAC-SHA256 over `"<t>.<body>"`, sent as
//! `X-Smsgw-Signature: t=<unix seconds>,v1=<lowercase hex>`.
//!
//! The timestamp is inside the signed bytes so a receiver can refuse replays older than its
//! tolerance (we suggest 5 minutes) without trusting an unsigned header. `v1` names the scheme;
//! a future scheme would add `v2=` beside it during a migration, so receivers should look for
//! the scheme they know and ignore the others.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header carrying the signature.
pub const HEADER: &str = "X-Smsgw-Signature";

type HmacSha256 = Hmac<Sha256>;

/// The raw 32-byte MAC of `t.body` under `secret`.
fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(itoa::Buffer::new().format(timestamp).as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn header_value(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

/// Why a signature was refused (receivers' side; used by our tests and documented as the
/// reference algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the tolerance")]
    Stale,
    #[error("signature mismatch")]
    Mismatch,
}

/// Checks a header value against `body`: parses `t` and every `v1`, refuses timestamps more
/// than `tolerance_s` away from `now_s`, compares in constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let mut t: Option<u64> = None;
    let mut sigs: Vec<&str> = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => sigs.push(v),
            Some(_) => {}
            None => return Err(VerifyError::Malformed),
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if t.abs_diff(now_s) > tolerance_s {
        return Err(VerifyError::Stale);
    }
    let expected = hex(&mac(secret, t, body));
    if sigs
        .iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // Computed independently with Python:
        // hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            header_value(b"key", 1_700_000_000, b"{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        // RFC 4231 case 2 proper, through `mac`'s building block.
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_own_and_refuses_tampering() {
        let body = br#"[{"event_id":"1:t:delivered"}]"#;
        let h = header_value(b"s3cret", 1000, body);
        assert_eq!(verify(b"s3cret", &h, body, 1000, 300), Ok(()));
        assert_eq!(verify(b"s3cret", &h, body, 1299, 300), Ok(()));
        assert_eq!(
            verify(b"s3cret", &h, body, 1301, 300),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(b"other", &h, body, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &h, b"[]", 1000, 300),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = h.replace("t=1000", "t=1001");
        assert_eq!(
            verify(b"s3cret", &moved, body, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        // Unknown schemes are ignored; a second v1 (rotation) may match.
        let extra = format!("{h},v2=abc,v1=00");
        assert_eq!(verify(b"s3cret", &extra, body, 1000, 300), Ok(()));
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "garbage"] {
            assert_eq!(
                verify(b"s3cret", bad, body, 1000, 300),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
    }
}
