//! Phone numbers to E.164 and to the `u64` key every policy structure uses.
//!
//! E.164 numbers have at most 15 digits and never start with 0 after the `+`, so the digits
//! read as one integer are a unique, compact key (`+4915112345678` → `4915112345678`).

/// Why a number could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("empty number")]
    Empty,
    #[error("unexpected character {0:?}")]
    BadChar(char),
    #[error("a national number (no + or 00) and no default country code is configured")]
    NoCountryCode,
    #[error("{0} digits; E.164 allows 1 to 15 after the country code's first digit")]
    Length(usize),
    #[error("E.164 numbers do not start with 0 after the +")]
    LeadingZero,
}

/// Normalisation rules (config `policy.default_country_code`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Normalizer {
    /// Digits of the country code put in front of national numbers (`"49"`); empty: national
    /// numbers are refused.
    pub default_country_code: String,
}

impl Normalizer {
    /// `"+49 (151) 123-45"`, `"0049151 12345"` → `4915112345`. Spaces, dashes, dots and
    /// parentheses are dropped; a leading `00` means `+`. A number with neither `+` nor `00`
    /// is national: with a default country code, one leading trunk `0` is dropped and the
    /// country code put in front (`0151…` → `49151…`); digits that already start with the
    /// country code are NOT special-cased (ambiguous), so lists should be written in E.164.
    pub fn to_key(&self, raw: &str) -> Result<u64, NumberError> {
        let mut digits = [0u8; 32];
        let mut n = 0usize;
        let mut plus = false;
        for (i, c) in raw.trim().chars().enumerate() {
            match c {
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' | '(' | ')' | '\t' => {}
                '0'..='9' => {
                    if n == digits.len() {
                        return Err(NumberError::Length(n + 1));
                    }
                    digits[n] = c as u8 - b'0';
                    n += 1;
                }
                other => return Err(NumberError::BadChar(other)),
            }
        }
        if n == 0 {
            return Err(NumberError::Empty);
        }
        // International digits: country code (when national) + body.
        let mut out = [0u8; 40];
        let mut len = 0usize;
        let body: &[u8] = if plus {
            &digits[..n]
        } else if n >= 2 && digits[0] == 0 && digits[1] == 0 {
            &digits[2..n]
        } else {
            if self.default_country_code.is_empty() {
                return Err(NumberError::NoCountryCode);
            }
            for b in self.default_country_code.bytes() {
                out[len] = b.wrapping_sub(b'0');
                len += 1;
            }
            // One national trunk prefix 0 is not part of the international number.
            if digits[0] == 0 {
                &digits[1..n]
            } else {
                &digits[..n]
            }
        };
        if len == 0 && body.first() == Some(&0) {
            return Err(NumberError::LeadingZero);
        }
        for &d in body {
            out[len] = d;
            len += 1;
        }
        if !(2..=15).contains(&len) {
            return Err(NumberError::Length(len));
        }
        let key = out[..len].iter().fold(0u64, |k, &d| k * 10 + u64::from(d));
        Ok(key)
    }

    /// The E.164 text of a key (`+` and the digits).
    pub fn key_to_e164(key: u64) -> String {
        format!("+{key}")
    }
}

/// Checks a default country code from configuration: 1 to 3 digits, not starting with 0.
pub fn valid_country_code(cc: &str) -> bool {
    cc.is_empty()
        || ((1..=3).contains(&cc.len())
            && cc.bytes().all(|b| b.is_ascii_digit())
            && !cc.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_usual_spellings() {
        let n = Normalizer::default();
        for s in [
            "+4915112345678",
            "+49 151 1234 5678",
            "+49 (151) 1234-5678",
            "004915112345678",
            "0049.151.12345678",
            "  +49-151-12345678 ",
        ] {
            assert_eq!(n.to_key(s), Ok(4915112345678), "{s}");
        }
        assert_eq!(Normalizer::key_to_e164(4915112345678), "+4915112345678");
    }

    #[test]
    fn national_numbers_need_a_country_code() {
        let n = Normalizer::default();
        assert_eq!(n.to_key("015112345678"), Err(NumberError::NoCountryCode));
        let de = Normalizer {
            default_country_code: "49".into(),
        };
        assert_eq!(de.to_key("0151 12345678"), Ok(4915112345678));
        assert_eq!(de.to_key("15112345678"), Ok(4915112345678));
        assert_eq!(de.to_key("+33612345678"), Ok(33612345678));
    }

    #[test]
    fn refuses_garbage() {
        let n = Normalizer::default();
        assert_eq!(n.to_key(""), Err(NumberError::Empty));
        assert_eq!(n.to_key("+"), Err(NumberError::Empty));
        assert_eq!(n.to_key("+49a"), Err(NumberError::BadChar('a')));
        assert_eq!(n.to_key("4+9"), Err(NumberError::BadChar('+')));
        assert_eq!(n.to_key("+0123456"), Err(NumberError::LeadingZero));
        assert_eq!(n.to_key("+1234567890123456"), Err(NumberError::Length(16)));
        assert_eq!(n.to_key("+1"), Err(NumberError::Length(1)));
        assert!(n.to_key(&"9".repeat(100)).is_err());
        assert!(valid_country_code("49") && valid_country_code("") && !valid_country_code("049"));
    }
}
