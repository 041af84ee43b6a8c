//! SMPP v3.4 PDU bodies as plain data. Field size limits follow the spec (section 4); the
//! `COctet<N>` type holds at most `N - 1` octets because `N` in the spec counts the NUL.
//!
//! Representation choices (made for the hot path):
//! - C-octet strings are stored inline (`COctet<N>`), so decoding a `submit_sm` allocates at
//!   most for `short_message` and the TLV section.
//! - TLVs are kept as one validated, encoded byte region (`Tlvs`) with typed accessors:
//!   unknown TLVs are preserved byte for byte and encoding them is a copy.

use super::tlv::Tlvs;

/// A C-octet string of at most `N - 1` octets (the spec's size `N` includes the NUL).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct COctet<const N: usize> {
    len: u8,
    buf: [u8; N],
}

/// The value does not fit the field: `max` is the number of octets allowed (without NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("value of {len} octets exceeds the field limit of {max}")]
pub struct TooLong {
    pub len: usize,
    pub max: usize,
}

impl<const N: usize> COctet<N> {
    /// The largest number of octets this field holds (the spec size minus the NUL).
    pub const MAX: usize = N - 1;

    pub const fn empty() -> Self {
        Self {
            len: 0,
            buf: [0; N],
        }
    }

    /// Builds a field from raw octets; fails if longer than `N - 1` or if it contains a NUL.
    pub fn new(bytes: &[u8]) -> Result<Self, TooLong> {
        if bytes.len() > Self::MAX || bytes.contains(&0) {
            return Err(TooLong {
                len: bytes.len(),
                max: Self::MAX,
            });
        }
        let mut buf = [0; N];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            buf,
        })
    }

    /// For the codec, which has already found the NUL: sets the value in place (no temporary
    /// to move, no second NUL scan as in `new`). Keeps the invariant that octets past `len` are zero, which the derived `PartialEq`/`Hash` rely on.
    #[inline]
    pub(crate) fn set_from_wire(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= Self::MAX && !bytes.contains(&0));
        let old = self.len as usize;
        // Empty is the common case (service_type, times): skip the `memcpy` call.
        if !bytes.is_empty() {
            self.buf[..bytes.len()].copy_from_slice(bytes);
        }
        if bytes.len() < old {
            self.buf[bytes.len()..old].fill(0);
        }
        self.len = bytes.len() as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Lossy view for logs and APIs; SMPP strings are ASCII in practice.
    pub fn as_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for COctet<N> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<const N: usize> std::fmt::Debug for COctet<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str_lossy())
    }
}

impl<const N: usize> TryFrom<&str> for COctet<N> {
    type Error = TooLong;
    fn try_from(s: &str) -> Result<Self, TooLong> {
        Self::new(s.as_bytes())
    }
}

pub type SystemId = COctet<16>;
pub type Password = COctet<9>;
pub type SystemType = COctet<13>;
pub type AddressRange = COctet<41>;
pub type ServiceType = COctet<6>;
/// Addresses in submit_sm / deliver_sm / submit_multi / query / cancel / replace.
pub type Addr21 = COctet<21>;
/// Addresses in data_sm and alert_notification.
pub type Addr65 = COctet<65>;
/// schedule_delivery_time / validity_period / final_date: empty or exactly 16 chars.
pub type Time17 = COctet<17>;
pub type MessageId = COctet<65>;
pub type DlName = COctet<21>;

/// command_id values (SMPP v3.4 section 5.1.2.1).
pub mod command_id {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_RECEIVER_RESP: u32 = 0x8000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const BIND_TRANSMITTER_RESP: u32 = 0x8000_0002;
    pub const QUERY_SM: u32 = 0x0000_0003;
    pub const QUERY_SM_RESP: u32 = 0x8000_0003;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const REPLACE_SM: u32 = 0x0000_0007;
    pub const REPLACE_SM_RESP: u32 = 0x8000_0007;
    pub const CANCEL_SM: u32 = 0x0000_0008;
    pub const CANCEL_SM_RESP: u32 = 0x8000_0008;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const OUTBIND: u32 = 0x0000_000B;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
    pub const SUBMIT_MULTI: u32 = 0x0000_0021;
    pub const SUBMIT_MULTI_RESP: u32 = 0x8000_0021;
    pub const ALERT_NOTIFICATION: u32 = 0x0000_0102;
    pub const DATA_SM: u32 = 0x0000_0103;
    pub const DATA_SM_RESP: u32 = 0x8000_0103;

    /// Responses have bit 31 set.
    pub const fn is_response(id: u32) -> bool {
        id & 0x8000_0000 != 0
    }
}

/// One PDU: the header fields a caller sets, plus the body.
/// `command_length` is computed on encode and checked on decode, so it is not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Pdu {
    pub command_status: u32,
    pub sequence_number: u32,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    GenericNack,
    BindReceiver(Bind),
    BindReceiverResp(BindResp),
    BindTransmitter(Bind),
    BindTransmitterResp(BindResp),
    BindTransceiver(Bind),
    BindTransceiverResp(BindResp),
    Outbind(Outbind),
    Unbind,
    UnbindResp,
    EnquireLink,
    EnquireLinkResp,
    SubmitSm(SubmitSm),
    SubmitSmResp(SubmitSmResp),
    DeliverSm(SubmitSm),
    DeliverSmResp(SubmitSmResp),
    SubmitMulti(SubmitMulti),
    SubmitMultiResp(SubmitMultiResp),
    DataSm(DataSm),
    DataSmResp(DataSmResp),
    QuerySm(QuerySm),
    QuerySmResp(QuerySmResp),
    CancelSm(CancelSm),
    CancelSmResp,
    ReplaceSm(ReplaceSm),
    ReplaceSmResp,
    AlertNotification(AlertNotification),
}

impl Body {
    pub fn command_id(&self) -> u32 {
        use command_id::*;
        match self {
            Body::GenericNack => GENERIC_NACK,
            Body::BindReceiver(_) => BIND_RECEIVER,
            Body::BindReceiverResp(_) => BIND_RECEIVER_RESP,
            Body::BindTransmitter(_) => BIND_TRANSMITTER,
            Body::BindTransmitterResp(_) => BIND_TRANSMITTER_RESP,
            Body::BindTransceiver(_) => BIND_TRANSCEIVER,
            Body::BindTransceiverResp(_) => BIND_TRANSCEIVER_RESP,
            Body::Outbind(_) => OUTBIND,
            Body::Unbind => UNBIND,
            Body::UnbindResp => UNBIND_RESP,
            Body::EnquireLink => ENQUIRE_LINK,
            Body::EnquireLinkResp => ENQUIRE_LINK_RESP,
            Body::SubmitSm(_) => SUBMIT_SM,
            Body::SubmitSmResp(_) => SUBMIT_SM_RESP,
            Body::DeliverSm(_) => DELIVER_SM,
            Body::DeliverSmResp(_) => DELIVER_SM_RESP,
            Body::SubmitMulti(_) => SUBMIT_MULTI,
            Body::SubmitMultiResp(_) => SUBMIT_MULTI_RESP,
            Body::DataSm(_) => DATA_SM,
            Body::DataSmResp(_) => DATA_SM_RESP,
            Body::QuerySm(_) => QUERY_SM,
            Body::QuerySmResp(_) => QUERY_SM_RESP,
            Body::CancelSm(_) => CANCEL_SM,
            Body::CancelSmResp => CANCEL_SM_RESP,
            Body::ReplaceSm(_) => REPLACE_SM,
            Body::ReplaceSmResp => REPLACE_SM_RESP,
            Body::AlertNotification(_) => ALERT_NOTIFICATION,
        }
    }
}

/// bind_receiver / bind_transmitter / bind_transceiver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bind {
    pub system_id: SystemId,
    pub password: Password,
    pub system_type: SystemType,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: AddressRange,
}

/// bind_*_resp. On an error status SMSCs often send no body: decode yields an empty system_id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BindResp {
    pub system_id: SystemId,
    /// Optional TLVs (sc_interface_version).
    pub tlvs: Tlvs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbind {
    pub system_id: SystemId,
    pub password: Password,
}

/// submit_sm and deliver_sm share this layout (section 4.4.1 and 4.6.1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitSm {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr21,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Addr21,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: Time17,
    pub validity_period: Time17,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// 0..=254 octets; `sm_length` on the wire is its length.
    pub short_message: Vec<u8>,
    pub tlvs: Tlvs,
}

/// submit_sm_resp and deliver_sm_resp. On an error status the body may be absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitSmResp {
    pub message_id: MessageId,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DestAddress {
    /// dest_flag 1
    Sme { ton: u8, npi: u8, addr: Addr21 },
    /// dest_flag 2
    DistributionList(DlName),
}

/// submit_multi; number_of_dests is `dest_addresses.len()` (1..=255).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitMulti {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr21,
    pub dest_addresses: Vec<DestAddress>,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: Time17,
    pub validity_period: Time17,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    pub short_message: Vec<u8>,
    pub tlvs: Tlvs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnsuccessSme {
    pub ton: u8,
    pub npi: u8,
    pub addr: Addr21,
    pub error_status_code: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitMultiResp {
    pub message_id: MessageId,
    pub unsuccess_smes: Vec<UnsuccessSme>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSm {
    pub service_type: ServiceType,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr65,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Addr65,
    pub esm_class: u8,
    pub registered_delivery: u8,
    pub data_coding: u8,
    pub tlvs: Tlvs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSmResp {
    pub message_id: MessageId,
    pub tlvs: Tlvs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuerySm {
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr21,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuerySmResp {
    pub message_id: MessageId,
    pub final_date: Time17,
    pub message_state: u8,
    pub error_code: u8,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CancelSm {
    pub service_type: ServiceType,
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr21,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: Addr21,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaceSm {
    pub message_id: MessageId,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr21,
    pub schedule_delivery_time: Time17,
    pub validity_period: Time17,
    pub registered_delivery: u8,
    pub sm_default_msg_id: u8,
    pub short_message: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertNotification {
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: Addr65,
    pub esme_addr_ton: u8,
    pub esme_addr_npi: u8,
    pub esme_addr: Addr65,
    /// Optional ms_availability_status.
    pub tlvs: Tlvs,
}
