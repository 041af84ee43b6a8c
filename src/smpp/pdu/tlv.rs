//! Optional parameters (TLVs). Stored as the encoded TLV region so unknown tags survive a
//! decode/encode round trip untouched and encoding is a single copy.

/// Standard SMPP v3.4 TLV tags (section 5.3.2).
pub mod tag {
    pub const DEST_ADDR_SUBUNIT: u16 = 0x0005;
    pub const DEST_NETWORK_TYPE: u16 = 0x0006;
    pub const DEST_BEARER_TYPE: u16 = 0x0007;
    pub const DEST_TELEMATICS_ID: u16 = 0x0008;
    pub const SOURCE_ADDR_SUBUNIT: u16 = 0x000D;
    pub const SOURCE_NETWORK_TYPE: u16 = 0x000E;
    pub const SOURCE_BEARER_TYPE: u16 = 0x000F;
    pub const SOURCE_TELEMATICS_ID: u16 = 0x0010;
    pub const QOS_TIME_TO_LIVE: u16 = 0x0017;
    pub const PAYLOAD_TYPE: u16 = 0x0019;
    pub const ADDITIONAL_STATUS_INFO_TEXT: u16 = 0x001D;
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const MS_MSG_WAIT_FACILITIES: u16 = 0x0030;
    pub const PRIVACY_INDICATOR: u16 = 0x0201;
    pub const SOURCE_SUBADDRESS: u16 = 0x0202;
    pub const DEST_SUBADDRESS: u16 = 0x0203;
    pub const USER_MESSAGE_REFERENCE: u16 = 0x0204;
    pub const USER_RESPONSE_CODE: u16 = 0x0205;
    pub const SOURCE_PORT: u16 = 0x020A;
    pub const DESTINATION_PORT: u16 = 0x020B;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const LANGUAGE_INDICATOR: u16 = 0x020D;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    pub const CALLBACK_NUM_PRES_IND: u16 = 0x0302;
    pub const CALLBACK_NUM_ATAG: u16 = 0x0303;
    pub const NUMBER_OF_MESSAGES: u16 = 0x0304;
    pub const CALLBACK_NUM: u16 = 0x0381;
    pub const DPF_RESULT: u16 = 0x0420;
    pub const SET_DPF: u16 = 0x0421;
    pub const MS_AVAILABILITY_STATUS: u16 = 0x0422;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const DELIVERY_FAILURE_REASON: u16 = 0x0425;
    pub const MORE_MESSAGES_TO_SEND: u16 = 0x0426;
    pub const MESSAGE_STATE: u16 = 0x0427;
    pub const USSD_SERVICE_OP: u16 = 0x0501;
    pub const DISPLAY_TIME: u16 = 0x1201;
    pub const SMS_SIGNAL: u16 = 0x1203;
    pub const MS_VALIDITY: u16 = 0x1204;
    pub const ALERT_ON_MESSAGE_DELIVERY: u16 = 0x130C;
    pub const ITS_REPLY_TYPE: u16 = 0x1380;
    pub const ITS_SESSION_INFO: u16 = 0x1383;
}

/// The encoded TLV section of a PDU: a sequence of (tag u16, length u16, value) records.
/// Invariant: `raw` always parses as whole TLV records (checked by `Tlvs::from_wire`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    raw: Vec<u8>,
}

/// One TLV borrowed from a `Tlvs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u16,
    pub value: &'a [u8],
}

impl Tlvs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes, as they go on the wire.
    pub fn as_wire(&self) -> &[u8] {
        &self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Wraps an already-validated encoded region. Callers outside the codec use `push`.
    pub(crate) fn from_validated(raw: Vec<u8>) -> Self {
        Self { raw }
    }

    pub fn iter(&self) -> TlvIter<'_> {
        TlvIter { rest: &self.raw }
    }

    /// First TLV with this tag.
    pub fn get(&self, tag: u16) -> Option<&[u8]> {
        self.iter().find(|t| t.tag == tag).map(|t| t.value)
    }

    pub fn get_u8(&self, tag: u16) -> Option<u8> {
        match self.get(tag)? {
            [b] => Some(*b),
            _ => None,
        }
    }

    pub fn get_u16(&self, tag: u16) -> Option<u16> {
        match self.get(tag)? {
            [a, b] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }

    /// A C-octet-string TLV value without its trailing NUL (tolerates a missing NUL).
    pub fn get_cstr(&self, tag: u16) -> Option<&[u8]> {
        let v = self.get(tag)?;
        Some(match v.iter().position(|&b| b == 0) {
            Some(n) => &v[..n],
            None => v,
        })
    }

    /// Appends a TLV. Values longer than 65535 octets are refused (the length field is u16).
    pub fn push(&mut self, tag: u16, value: &[u8]) -> Result<(), super::types::TooLong> {
        if value.len() > u16::MAX as usize {
            return Err(super::types::TooLong {
                len: value.len(),
                max: u16::MAX as usize,
            });
        }
        self.raw.extend_from_slice(&tag.to_be_bytes());
        self.raw
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.raw.extend_from_slice(value);
        Ok(())
    }

    pub fn push_u8(&mut self, tag: u16, v: u8) {
        self.push(tag, &[v]).expect("1 octet fits");
    }

    pub fn push_u16(&mut self, tag: u16, v: u16) {
        self.push(tag, &v.to_be_bytes()).expect("2 octets fit");
    }

    /// Appends a C-octet-string TLV (adds the NUL).
    pub fn push_cstr(&mut self, tag: u16, v: &[u8]) -> Result<(), super::types::TooLong> {
        let mut buf = Vec::with_capacity(v.len() + 1);
        buf.extend_from_slice(v);
        buf.push(0);
        self.push(tag, &buf)
    }
}

impl std::fmt::Debug for Tlvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|t| (format!("0x{:04X}", t.tag), t.value)))
            .finish()
    }
}

pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let tag = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        let len = u16::from_be_bytes([self.rest[2], self.rest[3]]) as usize;
        let end = 4 + len;
        if self.rest.len() < end {
            return None;
        }
        let value = &self.rest[4..end];
        self.rest = &self.rest[end..];
        Some(Tlv { tag, value })
    }
}

/// Allowed value length (min, max octets) of the standard v3.4 TLVs (section 5.3.2), `None`
/// for tags the spec does not define (vendor TLVs are kept unchecked). The codec checks these
/// both ways, so we neither send nor accept e.g. a 2-octet message_state.
///
/// Fixed-size integers are exact. For variable fields the spec's maximum is enforced and the
/// minimum is relaxed to what peers really send (e.g. receipted_message_id without its NUL).
pub fn value_len_bounds(tag: u16) -> Option<(usize, usize)> {
    use tag::*;
    Some(match tag {
        DEST_ADDR_SUBUNIT | DEST_NETWORK_TYPE | DEST_BEARER_TYPE => (1, 1),
        DEST_TELEMATICS_ID => (2, 2),
        SOURCE_ADDR_SUBUNIT | SOURCE_NETWORK_TYPE | SOURCE_BEARER_TYPE => (1, 1),
        SOURCE_TELEMATICS_ID => (1, 1),
        QOS_TIME_TO_LIVE => (4, 4),
        PAYLOAD_TYPE => (1, 1),
        ADDITIONAL_STATUS_INFO_TEXT => (0, 256),
        RECEIPTED_MESSAGE_ID => (0, 65),
        MS_MSG_WAIT_FACILITIES => (1, 1),
        PRIVACY_INDICATOR => (1, 1),
        SOURCE_SUBADDRESS | DEST_SUBADDRESS => (2, 23),
        USER_MESSAGE_REFERENCE => (2, 2),
        USER_RESPONSE_CODE => (1, 1),
        SOURCE_PORT | DESTINATION_PORT => (2, 2),
        SAR_MSG_REF_NUM => (2, 2),
        LANGUAGE_INDICATOR => (1, 1),
        SAR_TOTAL_SEGMENTS | SAR_SEGMENT_SEQNUM => (1, 1),
        SC_INTERFACE_VERSION => (1, 1),
        CALLBACK_NUM_PRES_IND => (1, 1),
        CALLBACK_NUM_ATAG => (0, 65),
        NUMBER_OF_MESSAGES => (1, 1),
        CALLBACK_NUM => (4, 19),
        DPF_RESULT | SET_DPF | MS_AVAILABILITY_STATUS => (1, 1),
        NETWORK_ERROR_CODE => (3, 3),
        // The u16 length field already bounds it; PDU max length bounds it further.
        MESSAGE_PAYLOAD => (0, u16::MAX as usize),
        DELIVERY_FAILURE_REASON | MORE_MESSAGES_TO_SEND | MESSAGE_STATE => (1, 1),
        USSD_SERVICE_OP => (1, 1),
        DISPLAY_TIME => (1, 1),
        SMS_SIGNAL => (2, 2),
        MS_VALIDITY => (1, 1),
        // v3.4 says length 0; v5 allows a 1-octet value and SMSCs mix the two.
        ALERT_ON_MESSAGE_DELIVERY => (0, 1),
        ITS_REPLY_TYPE => (1, 1),
        ITS_SESSION_INFO => (2, 2),
        _ => return None,
    })
}
