//! SMPP v3.4 wire codec: `decode`, `encode`, `encoded_len`. Sans-io: bytes in, bytes out.
//!
//! Decisions (each one is a place where peers in the field disagree with the spec):
//!
//! - **Framing.** `command_length` is checked as soon as its 4 octets are present, so a peer
//!   that sends a bad length and then waits gets an error, not a hang. A length below 16 or
//!   above `max_pdu_len` means framing is lost: the error is fatal (`is_fatal`), the caller
//!   answers generic_nack ESME_RINVCMDLEN and closes. Every other error happens inside a frame
//!   whose end is known (`frame_len`), so the caller can answer and skip just that frame.
//! - **Empty response bodies.** SMSCs answer failures (and some answer successes) with a
//!   header-only response. A response whose body is empty decodes to the body's `Default`
//!   (empty `message_id` / `system_id`) whatever the status, so the session always learns the
//!   outcome of its request.
//! - **Trailing octets.** PDUs that have no TLV section in v3.4 (submit_sm_resp, query_sm,
//!   enquire_link, ...) ignore octets after their last mandatory field. `command_length`
//!   bounds the frame, so the stream cannot desynchronise, and SMSCs that speak v5 append TLVs
//!   to v3.4 responses: rejecting a submit_sm_resp for that would turn an accepted message into
//!   an unknown outcome and invite a duplicate send. In PDUs that do carry TLVs, everything
//!   after the mandatory fields must parse as TLVs (ESME_RINVOPTPARSTREAM otherwise).
//! - **Missing NUL on the last field of a response.** A message_id / system_id that runs to
//!   the end of a response body without its NUL is accepted (a known SMSC bug); in requests,
//!   and for fields that are not last, it is an error naming the field.
//! - **Time fields** (schedule_delivery_time, validity_period, final_date): decode accepts any
//!   C-string of up to 16 octets (some SMSCs send shortened relative times; we never interpret
//!   them in the codec); encode requires the spec's form: empty or exactly 16 octets ending in
//!   `+`, `-` or `R`.
//! - **TLVs.** Standard tags are length-checked (`tlv::value_len_bounds`) both ways; unknown
//!   tags are kept byte for byte. short_message together with message_payload is accepted on
//!   decode (receipts do that) but refused on encode (the spec forbids it).
//!
//! Allocation: decode allocates at most once for `short_message`, once for the TLV region (and
//! once for the address list of submit_multi / submit_multi_resp). Encode allocates nothing
//! when `out` has `encoded_len(pdu)` spare capacity, and leaves `out` untouched on error.

use super::status::*;
use super::tlv::{Tlvs, value_len_bounds};
use super::types::command_id as cmd;
use super::types::*;

pub const HEADER_LEN: usize = 16;
/// Default cap on command_length; configurable per session.
pub const DEFAULT_MAX_PDU_LEN: usize = 64 * 1024;
/// The largest short_message (sm_length) v3.4 allows; longer texts go in message_payload.
pub const MAX_SHORT_MESSAGE_LEN: usize = 254;
/// submit_multi number_of_dests and submit_multi_resp no_unsuccess are one octet.
pub const MAX_DESTS: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command_length: u32,
    pub command_id: u32,
    pub command_status: u32,
    pub sequence_number: u32,
}

/// The PDU field an error is about, by its spec name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    SystemId,
    Password,
    SystemType,
    InterfaceVersion,
    AddrTon,
    AddrNpi,
    AddressRange,
    ServiceType,
    SourceAddrTon,
    SourceAddrNpi,
    SourceAddr,
    DestAddrTon,
    DestAddrNpi,
    DestinationAddr,
    EsmClass,
    ProtocolId,
    PriorityFlag,
    ScheduleDeliveryTime,
    ValidityPeriod,
    RegisteredDelivery,
    ReplaceIfPresentFlag,
    DataCoding,
    SmDefaultMsgId,
    SmLength,
    ShortMessage,
    MessageId,
    NumberOfDests,
    DestFlag,
    DlName,
    NoUnsuccess,
    ErrorStatusCode,
    FinalDate,
    MessageState,
    ErrorCode,
    EsmeAddrTon,
    EsmeAddrNpi,
    EsmeAddr,
    /// The optional-parameter (TLV) region.
    Tlvs,
}

impl Field {
    pub const fn name(self) -> &'static str {
        use Field::*;
        match self {
            SystemId => "system_id",
            Password => "password",
            SystemType => "system_type",
            InterfaceVersion => "interface_version",
            AddrTon => "addr_ton",
            AddrNpi => "addr_npi",
            AddressRange => "address_range",
            ServiceType => "service_type",
            SourceAddrTon => "source_addr_ton",
            SourceAddrNpi => "source_addr_npi",
            SourceAddr => "source_addr",
            DestAddrTon => "dest_addr_ton",
            DestAddrNpi => "dest_addr_npi",
            DestinationAddr => "destination_addr",
            EsmClass => "esm_class",
            ProtocolId => "protocol_id",
            PriorityFlag => "priority_flag",
            ScheduleDeliveryTime => "schedule_delivery_time",
            ValidityPeriod => "validity_period",
            RegisteredDelivery => "registered_delivery",
            ReplaceIfPresentFlag => "replace_if_present_flag",
            DataCoding => "data_coding",
            SmDefaultMsgId => "sm_default_msg_id",
            SmLength => "sm_length",
            ShortMessage => "short_message",
            MessageId => "message_id",
            NumberOfDests => "number_of_dests",
            DestFlag => "dest_flag",
            DlName => "dl_name",
            NoUnsuccess => "no_unsuccess",
            ErrorStatusCode => "error_status_code",
            FinalDate => "final_date",
            MessageState => "message_state",
            ErrorCode => "error_code",
            EsmeAddrTon => "esme_addr_ton",
            EsmeAddrNpi => "esme_addr_npi",
            EsmeAddr => "esme_addr",
            Tlvs => "optional parameters",
        }
    }

    /// The command_status that names a problem with this field (v3.4 5.1.3), if there is one.
    const fn status(self) -> Option<u32> {
        use Field::*;
        Some(match self {
            SystemId => ESME_RINVSYSID,
            Password => ESME_RINVPASWD,
            SystemType => ESME_RINVSYSTYP,
            AddressRange => ESME_RBINDFAIL,
            ServiceType => ESME_RINVSERTYP,
            SourceAddr => ESME_RINVSRCADR,
            DestinationAddr | EsmeAddr => ESME_RINVDSTADR,
            ScheduleDeliveryTime => ESME_RINVSCHED,
            ValidityPeriod => ESME_RINVEXPIRY,
            SmLength | ShortMessage => ESME_RINVMSGLEN,
            MessageId => ESME_RINVMSGID,
            NumberOfDests => ESME_RINVNUMDESTS,
            DestFlag => ESME_RINVDESTFLAG,
            DlName => ESME_RINVDLNAME,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with one field of a frame whose boundary is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("the body ends before this mandatory field")]
    Truncated,
    #[error("C-octet string has no NUL within its {max} octets + NUL")]
    CStringTooLong { max: usize },
    #[error("C-octet string runs to the end of the body without a NUL")]
    MissingNul,
    #[error("sm_length {sm_length} exceeds the v3.4 maximum of 254")]
    SmLengthTooLarge { sm_length: u8 },
    #[error("sm_length {sm_length} but only {available} octets left in the body")]
    ShortMessageTruncated { sm_length: u8, available: usize },
    #[error("number_of_dests is 0 (must be 1..=255)")]
    NoDestinations,
    #[error("dest_flag {0} (must be 1 = SME address or 2 = distribution list)")]
    InvalidDestFlag(u8),
    #[error("{remaining} octets left, too few for a TLV header")]
    TlvHeaderTruncated { remaining: usize },
    #[error("TLV 0x{tag:04X} declares {len} octets but only {available} remain")]
    TlvValueTruncated {
        tag: u16,
        len: u16,
        available: usize,
    },
    #[error("TLV 0x{tag:04X} has length {len}, allowed {min}..={max}")]
    TlvLength {
        tag: u16,
        len: u16,
        min: usize,
        max: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fatal: framing is lost.
    #[error("command_length {command_length} is below the 16-octet header")]
    CommandLengthTooSmall {
        command_length: u32,
        /// The header's sequence_number slot, if those octets had arrived.
        sequence_number: Option<u32>,
    },
    /// Fatal: the length is garbage or hostile; skipping it would mean reading up to 4 GiB.
    #[error("command_length {command_length} exceeds the maximum PDU length {max}")]
    CommandLengthTooLarge {
        command_length: u32,
        max: usize,
        sequence_number: Option<u32>,
    },
    /// Not fatal: answer generic_nack ESME_RINVCMDID and skip `frame_len` octets.
    #[error("unknown command_id 0x{:08X} (sequence {})", .header.command_id, .header.sequence_number)]
    UnknownCommandId { header: Header },
    /// Not fatal: a field of a known PDU is invalid; the frame can be skipped.
    #[error("{}: {field}: {kind} (sequence {})", command_name(.header.command_id), .header.sequence_number)]
    Body {
        header: Header,
        field: Field,
        kind: FieldError,
    },
}

impl DecodeError {
    /// The sequence_number to echo in the answer, when the header arrived.
    pub fn sequence_number(&self) -> Option<u32> {
        match self {
            Self::CommandLengthTooSmall {
                sequence_number, ..
            }
            | Self::CommandLengthTooLarge {
                sequence_number, ..
            } => *sequence_number,
            Self::UnknownCommandId { header } | Self::Body { header, .. } => {
                Some(header.sequence_number)
            }
        }
    }

    /// The command_id of the offending PDU, when the header arrived and framing holds.
    pub fn command_id(&self) -> Option<u32> {
        match self {
            Self::UnknownCommandId { header } | Self::Body { header, .. } => {
                Some(header.command_id)
            }
            _ => None,
        }
    }

    /// Octets to drop from the front of the buffer to continue with the next frame; `None`
    /// when the frame boundary is unknown (then `is_fatal`).
    pub fn frame_len(&self) -> Option<usize> {
        match self {
            Self::UnknownCommandId { header } | Self::Body { header, .. } => {
                Some(header.command_length as usize)
            }
            _ => None,
        }
    }

    /// Framing is lost: answer (optionally) and close the session.
    pub fn is_fatal(&self) -> bool {
        self.frame_len().is_none()
    }

    /// The command_status to answer with: ESME_RINVCMDLEN for framing and truncation,
    /// ESME_RINVCMDID for an unknown command, ESME_RINVMSGLEN for short_message, the
    /// field's own status (ESME_RINVSRCADR, ESME_RINVSYSID, ...) where v3.4 has one, and
    /// ESME_RINVOPTPARSTREAM / ESME_RINVPARLEN for the TLV region.
    pub fn command_status(&self) -> u32 {
        match self {
            Self::CommandLengthTooSmall { .. } | Self::CommandLengthTooLarge { .. } => {
                ESME_RINVCMDLEN
            }
            Self::UnknownCommandId { .. } => ESME_RINVCMDID,
            Self::Body { field, kind, .. } => {
                match kind {
                    FieldError::TlvHeaderTruncated { .. }
                    | FieldError::TlvValueTruncated { .. } => ESME_RINVOPTPARSTREAM,
                    FieldError::TlvLength { .. } => ESME_RINVPARLEN,
                    FieldError::SmLengthTooLarge { .. }
                    | FieldError::ShortMessageTruncated { .. } => ESME_RINVMSGLEN,
                    FieldError::Truncated => ESME_RINVCMDLEN,
                    _ => field.status().unwrap_or(ESME_RINVCMDLEN),
                }
            }
        }
    }

    /// Which PDU to answer with (carrying `command_status` and `sequence_number`):
    /// generic_nack for framing errors, unknown commands and requests that have no response
    /// (outbind, alert_notification); the matching `*_resp` for a known request with a bad
    /// field (so e.g. a bad deliver_sm gets a deliver_sm_resp the SMSC understands); `None`
    /// for a malformed *response*: never answer an answer; the session fails the pending
    /// request with this sequence_number instead.
    pub fn answer_command_id(&self) -> Option<u32> {
        match self {
            Self::Body { header, .. } => {
                let id = header.command_id;
                if cmd::is_response(id) {
                    None
                } else if matches!(id, cmd::OUTBIND | cmd::ALERT_NOTIFICATION) {
                    Some(cmd::GENERIC_NACK)
                } else {
                    Some(id | 0x8000_0000)
                }
            }
            _ => Some(cmd::GENERIC_NACK),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("short_message of {len} octets exceeds 254; use message_payload or segment")]
    ShortMessageTooLong { len: usize },
    #[error("short_message and message_payload are both set (v3.4 allows only one)")]
    ShortMessageAndPayload,
    #[error("submit_multi needs 1..=255 destinations, got {count}")]
    DestinationCount { count: usize },
    #[error("submit_multi_resp lists {count} unsuccessful SMEs, at most 255 fit")]
    UnsuccessCount { count: usize },
    #[error("{field} must be empty or 16 octets ending in '+', '-' or 'R' (got {len} octets)")]
    TimeFormat { field: Field, len: usize },
    #[error("TLV 0x{tag:04X} has length {len}, allowed {min}..={max}")]
    TlvLength {
        tag: u16,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("encoded PDU of {len} octets exceeds the u32 command_length")]
    PduTooLong { len: usize },
}

/// The spec name of a command_id, for logs ("submit_sm"); "unknown" otherwise.
pub fn command_name(id: u32) -> &'static str {
    use cmd::*;
    match id {
        GENERIC_NACK => "generic_nack",
        BIND_RECEIVER => "bind_receiver",
        BIND_RECEIVER_RESP => "bind_receiver_resp",
        BIND_TRANSMITTER => "bind_transmitter",
        BIND_TRANSMITTER_RESP => "bind_transmitter_resp",
        QUERY_SM => "query_sm",
        QUERY_SM_RESP => "query_sm_resp",
        SUBMIT_SM => "submit_sm",
        SUBMIT_SM_RESP => "submit_sm_resp",
        DELIVER_SM => "deliver_sm",
        DELIVER_SM_RESP => "deliver_sm_resp",
        UNBIND => "unbind",
        UNBIND_RESP => "unbind_resp",
        REPLACE_SM => "replace_sm",
        REPLACE_SM_RESP => "replace_sm_resp",
        CANCEL_SM => "cancel_sm",
        CANCEL_SM_RESP => "cancel_sm_resp",
        BIND_TRANSCEIVER => "bind_transceiver",
        BIND_TRANSCEIVER_RESP => "bind_transceiver_resp",
        OUTBIND => "outbind",
        ENQUIRE_LINK => "enquire_link",
        ENQUIRE_LINK_RESP => "enquire_link_resp",
        SUBMIT_MULTI => "submit_multi",
        SUBMIT_MULTI_RESP => "submit_multi_resp",
        ALERT_NOTIFICATION => "alert_notification",
        DATA_SM => "data_sm",
        DATA_SM_RESP => "data_sm_resp",
        _ => "unknown",
    }
}

/// Reads the header if 16 octets are there (no validation beyond that).
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(Header {
        command_length: be32(buf, 0),
        command_id: be32(buf, 4),
        command_status: be32(buf, 8),
        sequence_number: be32(buf, 12),
    })
}

#[inline]
fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

// ---------------------------------------------------------------------------------------------
// Decode

/// A cursor over one PDU body (the frame is complete, so running out is a field error).
///
/// Errors are sticky rather than `Result`s: a failed read records the first error (so the
/// error names the first bad field), moves the cursor to the end (later reads fail fast and
/// allocate nothing) and returns a default. Bodies are thus built without a wide `Result` per
/// field, the hot ones in place (`decode_body_into`); `decode` checks `err` once at the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    err: Option<(Field, FieldError)>,
    /// Set by `decode_body_into` for a command_id it does not know.
    unknown_command: bool,
}

impl<'a> Reader<'a> {
    #[cold]
    #[inline(never)]
    fn fail(&mut self, field: Field, kind: FieldError) {
        if self.err.is_none() {
            self.err = Some((field, kind));
        }
        self.pos = self.buf.len();
    }

    #[inline(always)]
    fn u8(&mut self, field: Field) -> u8 {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => {
                self.fail(field, FieldError::Truncated);
                0
            }
        }
    }

    /// `K` consecutive one-octet fields with one bounds check; on a short body it falls back
    /// to field-by-field reads so the error still names the first missing field.
    #[inline(always)]
    fn u8s<const K: usize>(&mut self, fields: [Field; K]) -> [u8; K] {
        match self.buf.get(self.pos..self.pos + K) {
            Some(b) => {
                self.pos += K;
                let mut out = [0; K];
                out.copy_from_slice(b);
                out
            }
            None => fields.map(|f| self.u8(f)),
        }
    }

    #[inline]
    fn u32(&mut self, field: Field) -> u32 {
        match self.buf.get(self.pos..self.pos + 4) {
            Some(b) => {
                self.pos += 4;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
            None => {
                self.fail(field, FieldError::Truncated);
                0
            }
        }
    }

    /// A C-octet string of at most `N - 1` octets plus its NUL, written into `dst` (left
    /// unchanged on error). `lenient_end`: a string that runs to the end of the body without
    /// its NUL is accepted (see the module docs).
    // Always inlined: five call sites per submit_sm; as a call it cost ~10% of a decode.
    #[inline(always)]
    fn cstr_into<const N: usize>(&mut self, dst: &mut COctet<N>, field: Field, lenient_end: bool) {
        let rest = &self.buf[self.pos..];
        let window = &rest[..rest.len().min(N)];
        match window.iter().position(|&b| b == 0) {
            Some(n) => {
                self.pos += n + 1;
                dst.set_from_wire(&window[..n]);
            }
            None if rest.is_empty() => self.fail(field, FieldError::Truncated),
            None if window.len() == N => {
                self.fail(field, FieldError::CStringTooLong { max: N - 1 })
            }
            None if lenient_end => {
                self.pos = self.buf.len();
                dst.set_from_wire(window);
            }
            None => self.fail(field, FieldError::MissingNul),
        }
    }

    #[inline]
    fn cstr<const N: usize>(&mut self, field: Field) -> COctet<N> {
        let mut v = COctet::empty();
        self.cstr_into(&mut v, field, false);
        v
    }

    /// For the last field of a response.
    #[inline]
    fn cstr_last<const N: usize>(&mut self, field: Field) -> COctet<N> {
        let mut v = COctet::empty();
        self.cstr_into(&mut v, field, true);
        v
    }

    /// sm_length + short_message: one allocation (none if empty or after an error).
    #[inline]
    fn short_message(&mut self) -> Vec<u8> {
        let sm_length = self.u8(Field::SmLength);
        let n = sm_length as usize;
        if n > MAX_SHORT_MESSAGE_LEN {
            self.fail(Field::SmLength, FieldError::SmLengthTooLarge { sm_length });
            return Vec::new();
        }
        match self.buf.get(self.pos..self.pos + n) {
            Some(text) => {
                self.pos += n;
                text.to_vec()
            }
            None => {
                let available = self.buf.len() - self.pos;
                self.fail(
                    Field::ShortMessage,
                    FieldError::ShortMessageTruncated {
                        sm_length,
                        available,
                    },
                );
                Vec::new()
            }
        }
    }

    /// The rest of the body as a TLV region: validated, then copied once.
    #[inline]
    fn tlvs(&mut self) -> Tlvs {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        if rest.is_empty() {
            return Tlvs::new();
        }
        match validate_tlvs(rest) {
            Ok(()) => Tlvs::from_validated(rest.to_vec()),
            Err(kind) => {
                self.fail(Field::Tlvs, kind);
                Tlvs::new()
            }
        }
    }
}

fn validate_tlvs(mut rest: &[u8]) -> Result<(), FieldError> {
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(FieldError::TlvHeaderTruncated {
                remaining: rest.len(),
            });
        }
        let tag = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]);
        let available = rest.len() - 4;
        if len as usize > available {
            return Err(FieldError::TlvValueTruncated {
                tag,
                len,
                available,
            });
        }
        if let Some((min, max)) = value_len_bounds(tag)
            && !(min..=max).contains(&(len as usize))
        {
            return Err(FieldError::TlvLength { tag, len, min, max });
        }
        rest = &rest[4 + len as usize..];
    }
    Ok(())
}

/// Decodes one PDU from the front of `buf`. `Ok(None)`: need more bytes.
/// On success returns the PDU and the number of octets consumed (its command_length).
/// See the module docs for what is accepted leniently and why.
pub fn decode(buf: &[u8], max_pdu_len: usize) -> Result<Option<(Pdu, usize)>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let command_length = be32(buf, 0);
    let frame_len = command_length as usize;
    if frame_len < HEADER_LEN || frame_len > max_pdu_len {
        return Err(length_error(buf, command_length, max_pdu_len));
    }
    if buf.len() < frame_len {
        return Ok(None);
    }
    let header = Header {
        command_length,
        command_id: be32(buf, 4),
        command_status: be32(buf, 8),
        sequence_number: be32(buf, 12),
    };
    let mut r = Reader {
        buf: &buf[HEADER_LEN..frame_len],
        pos: 0,
        err: None,
        unknown_command: false,
    };
    // The body is filled in place: building it by value and wrapping it in
    // `Body`/`Pdu`/`Option`/`Result` copies the ~200-octet struct at every layer, which was
    // most of the cost of a submit_sm decode.
    let mut pdu = Pdu {
        command_status: header.command_status,
        sequence_number: header.sequence_number,
        body: Body::GenericNack,
    };
    decode_body_into(header.command_id, &mut pdu.body, &mut r);
    if r.unknown_command {
        return Err(DecodeError::UnknownCommandId { header });
    }
    if let Some((field, kind)) = r.err {
        return Err(DecodeError::Body {
            header,
            field,
            kind,
        });
    }
    Ok(Some((pdu, frame_len)))
}

#[cold]
fn length_error(buf: &[u8], command_length: u32, max: usize) -> DecodeError {
    let sequence_number = (buf.len() >= HEADER_LEN).then(|| be32(buf, 12));
    if (command_length as usize) < HEADER_LEN {
        DecodeError::CommandLengthTooSmall {
            command_length,
            sequence_number,
        }
    } else {
        DecodeError::CommandLengthTooLarge {
            command_length,
            max,
            sequence_number,
        }
    }
}

/// Field errors are left in `r.err`; an unknown command_id sets `r.unknown_command`.
/// The hot PDUs (submit_sm, deliver_sm and their responses) are decoded in place.
#[inline]
fn decode_body_into(command_id: u32, body: &mut Body, r: &mut Reader<'_>) {
    match command_id {
        cmd::SUBMIT_SM => {
            *body = Body::SubmitSm(SubmitSm::default());
            if let Body::SubmitSm(s) = body {
                sm_into(s, r);
            }
        }
        cmd::DELIVER_SM => {
            *body = Body::DeliverSm(SubmitSm::default());
            if let Body::DeliverSm(s) = body {
                sm_into(s, r);
            }
        }
        cmd::SUBMIT_SM_RESP if !r.buf.is_empty() => {
            *body = Body::SubmitSmResp(SubmitSmResp::default());
            if let Body::SubmitSmResp(s) = body {
                r.cstr_into(&mut s.message_id, Field::MessageId, true);
            }
        }
        cmd::DELIVER_SM_RESP if !r.buf.is_empty() => {
            *body = Body::DeliverSmResp(SubmitSmResp::default());
            if let Body::DeliverSmResp(s) = body {
                r.cstr_into(&mut s.message_id, Field::MessageId, true);
            }
        }
        _ => match decode_known_body(command_id, r) {
            Some(b) => *body = b,
            None => r.unknown_command = true,
        },
    }
}

#[inline]
fn decode_known_body(command_id: u32, r: &mut Reader<'_>) -> Option<Body> {
    use cmd::*;
    // Header-only responses (see module docs): the body's Default.
    if is_response(command_id) && r.buf.is_empty() {
        return Some(match command_id {
            GENERIC_NACK => Body::GenericNack,
            BIND_RECEIVER_RESP => Body::BindReceiverResp(BindResp::default()),
            BIND_TRANSMITTER_RESP => Body::BindTransmitterResp(BindResp::default()),
            BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp(BindResp::default()),
            UNBIND_RESP => Body::UnbindResp,
            ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            SUBMIT_SM_RESP => Body::SubmitSmResp(SubmitSmResp::default()),
            DELIVER_SM_RESP => Body::DeliverSmResp(SubmitSmResp::default()),
            SUBMIT_MULTI_RESP => Body::SubmitMultiResp(SubmitMultiResp::default()),
            DATA_SM_RESP => Body::DataSmResp(DataSmResp::default()),
            QUERY_SM_RESP => Body::QuerySmResp(QuerySmResp::default()),
            CANCEL_SM_RESP => Body::CancelSmResp,
            REPLACE_SM_RESP => Body::ReplaceSmResp,
            _ => return None,
        });
    }
    Some(match command_id {
        ENQUIRE_LINK => Body::EnquireLink,
        ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
        GENERIC_NACK => Body::GenericNack,
        UNBIND => Body::Unbind,
        UNBIND_RESP => Body::UnbindResp,
        BIND_RECEIVER => Body::BindReceiver(bind(r)),
        BIND_TRANSMITTER => Body::BindTransmitter(bind(r)),
        BIND_TRANSCEIVER => Body::BindTransceiver(bind(r)),
        BIND_RECEIVER_RESP => Body::BindReceiverResp(bind_resp(r)),
        BIND_TRANSMITTER_RESP => Body::BindTransmitterResp(bind_resp(r)),
        BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp(bind_resp(r)),
        OUTBIND => Body::Outbind(Outbind {
            system_id: r.cstr(Field::SystemId),
            password: r.cstr(Field::Password),
        }),
        SUBMIT_MULTI => Body::SubmitMulti(submit_multi(r)),
        SUBMIT_MULTI_RESP => Body::SubmitMultiResp(submit_multi_resp(r)),
        DATA_SM => Body::DataSm(DataSm {
            service_type: r.cstr(Field::ServiceType),
            source_addr_ton: r.u8(Field::SourceAddrTon),
            source_addr_npi: r.u8(Field::SourceAddrNpi),
            source_addr: r.cstr(Field::SourceAddr),
            dest_addr_ton: r.u8(Field::DestAddrTon),
            dest_addr_npi: r.u8(Field::DestAddrNpi),
            destination_addr: r.cstr(Field::DestinationAddr),
            esm_class: r.u8(Field::EsmClass),
            registered_delivery: r.u8(Field::RegisteredDelivery),
            data_coding: r.u8(Field::DataCoding),
            tlvs: r.tlvs(),
        }),
        DATA_SM_RESP => Body::DataSmResp(DataSmResp {
            // Not last: TLVs may follow, so the NUL is required.
            message_id: r.cstr(Field::MessageId),
            tlvs: r.tlvs(),
        }),
        QUERY_SM => Body::QuerySm(QuerySm {
            message_id: r.cstr(Field::MessageId),
            source_addr_ton: r.u8(Field::SourceAddrTon),
            source_addr_npi: r.u8(Field::SourceAddrNpi),
            source_addr: r.cstr(Field::SourceAddr),
        }),
        QUERY_SM_RESP => Body::QuerySmResp(QuerySmResp {
            message_id: r.cstr(Field::MessageId),
            final_date: r.cstr(Field::FinalDate),
            message_state: r.u8(Field::MessageState),
            error_code: r.u8(Field::ErrorCode),
        }),
        CANCEL_SM => Body::CancelSm(CancelSm {
            service_type: r.cstr(Field::ServiceType),
            message_id: r.cstr(Field::MessageId),
            source_addr_ton: r.u8(Field::SourceAddrTon),
            source_addr_npi: r.u8(Field::SourceAddrNpi),
            source_addr: r.cstr(Field::SourceAddr),
            dest_addr_ton: r.u8(Field::DestAddrTon),
            dest_addr_npi: r.u8(Field::DestAddrNpi),
            destination_addr: r.cstr(Field::DestinationAddr),
        }),
        CANCEL_SM_RESP => Body::CancelSmResp,
        REPLACE_SM => Body::ReplaceSm(ReplaceSm {
            message_id: r.cstr(Field::MessageId),
            source_addr_ton: r.u8(Field::SourceAddrTon),
            source_addr_npi: r.u8(Field::SourceAddrNpi),
            source_addr: r.cstr(Field::SourceAddr),
            schedule_delivery_time: r.cstr(Field::ScheduleDeliveryTime),
            validity_period: r.cstr(Field::ValidityPeriod),
            registered_delivery: r.u8(Field::RegisteredDelivery),
            sm_default_msg_id: r.u8(Field::SmDefaultMsgId),
            short_message: r.short_message(),
        }),
        REPLACE_SM_RESP => Body::ReplaceSmResp,
        ALERT_NOTIFICATION => Body::AlertNotification(AlertNotification {
            source_addr_ton: r.u8(Field::SourceAddrTon),
            source_addr_npi: r.u8(Field::SourceAddrNpi),
            source_addr: r.cstr(Field::SourceAddr),
            esme_addr_ton: r.u8(Field::EsmeAddrTon),
            esme_addr_npi: r.u8(Field::EsmeAddrNpi),
            esme_addr: r.cstr(Field::EsmeAddr),
            tlvs: r.tlvs(),
        }),
        _ => return None,
    })
}

/// submit_sm / deliver_sm body, in wire order, into a default `SubmitSm`.
#[inline]
fn sm_into(s: &mut SubmitSm, r: &mut Reader<'_>) {
    r.cstr_into(&mut s.service_type, Field::ServiceType, false);
    [s.source_addr_ton, s.source_addr_npi] = r.u8s([Field::SourceAddrTon, Field::SourceAddrNpi]);
    r.cstr_into(&mut s.source_addr, Field::SourceAddr, false);
    [s.dest_addr_ton, s.dest_addr_npi] = r.u8s([Field::DestAddrTon, Field::DestAddrNpi]);
    r.cstr_into(&mut s.destination_addr, Field::DestinationAddr, false);
    [s.esm_class, s.protocol_id, s.priority_flag] =
        r.u8s([Field::EsmClass, Field::ProtocolId, Field::PriorityFlag]);
    r.cstr_into(
        &mut s.schedule_delivery_time,
        Field::ScheduleDeliveryTime,
        false,
    );
    r.cstr_into(&mut s.validity_period, Field::ValidityPeriod, false);
    [
        s.registered_delivery,
        s.replace_if_present_flag,
        s.data_coding,
        s.sm_default_msg_id,
    ] = r.u8s([
        Field::RegisteredDelivery,
        Field::ReplaceIfPresentFlag,
        Field::DataCoding,
        Field::SmDefaultMsgId,
    ]);
    s.short_message = r.short_message();
    s.tlvs = r.tlvs();
}

fn bind(r: &mut Reader<'_>) -> Bind {
    Bind {
        system_id: r.cstr(Field::SystemId),
        password: r.cstr(Field::Password),
        system_type: r.cstr(Field::SystemType),
        interface_version: r.u8(Field::InterfaceVersion),
        addr_ton: r.u8(Field::AddrTon),
        addr_npi: r.u8(Field::AddrNpi),
        address_range: r.cstr(Field::AddressRange),
    }
}

fn bind_resp(r: &mut Reader<'_>) -> BindResp {
    BindResp {
        system_id: r.cstr_last(Field::SystemId),
        tlvs: r.tlvs(),
    }
}

fn submit_multi(r: &mut Reader<'_>) -> SubmitMulti {
    let service_type = r.cstr(Field::ServiceType);
    let source_addr_ton = r.u8(Field::SourceAddrTon);
    let source_addr_npi = r.u8(Field::SourceAddrNpi);
    let source_addr = r.cstr(Field::SourceAddr);
    let number_of_dests = r.u8(Field::NumberOfDests);
    if number_of_dests == 0 {
        r.fail(Field::NumberOfDests, FieldError::NoDestinations);
    }
    // Bounded by the u8 count (255), so the pre-allocation is bounded too.
    let mut dest_addresses = Vec::with_capacity(number_of_dests as usize);
    for _ in 0..number_of_dests {
        if r.err.is_some() {
            break;
        }
        dest_addresses.push(match r.u8(Field::DestFlag) {
            1 => DestAddress::Sme {
                ton: r.u8(Field::DestAddrTon),
                npi: r.u8(Field::DestAddrNpi),
                addr: r.cstr(Field::DestinationAddr),
            },
            2 => DestAddress::DistributionList(r.cstr(Field::DlName)),
            flag => {
                r.fail(Field::DestFlag, FieldError::InvalidDestFlag(flag));
                break;
            }
        });
    }
    SubmitMulti {
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addresses,
        esm_class: r.u8(Field::EsmClass),
        protocol_id: r.u8(Field::ProtocolId),
        priority_flag: r.u8(Field::PriorityFlag),
        schedule_delivery_time: r.cstr(Field::ScheduleDeliveryTime),
        validity_period: r.cstr(Field::ValidityPeriod),
        registered_delivery: r.u8(Field::RegisteredDelivery),
        replace_if_present_flag: r.u8(Field::ReplaceIfPresentFlag),
        data_coding: r.u8(Field::DataCoding),
        sm_default_msg_id: r.u8(Field::SmDefaultMsgId),
        short_message: r.short_message(),
        tlvs: r.tlvs(),
    }
}

fn submit_multi_resp(r: &mut Reader<'_>) -> SubmitMultiResp {
    let message_id = r.cstr(Field::MessageId);
    let count = r.u8(Field::NoUnsuccess);
    let mut unsuccess_smes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if r.err.is_some() {
            break;
        }
        unsuccess_smes.push(UnsuccessSme {
            ton: r.u8(Field::DestAddrTon),
            npi: r.u8(Field::DestAddrNpi),
            addr: r.cstr(Field::DestinationAddr),
            error_status_code: r.u32(Field::ErrorStatusCode),
        });
    }
    SubmitMultiResp {
        message_id,
        unsuccess_smes,
    }
}

// ---------------------------------------------------------------------------------------------
// Encode

#[inline]
fn cstr_len<const N: usize>(s: &COctet<N>) -> usize {
    s.len() + 1
}

fn dest_len(d: &DestAddress) -> usize {
    match d {
        DestAddress::Sme { addr, .. } => 1 + 2 + cstr_len(addr),
        DestAddress::DistributionList(name) => 1 + cstr_len(name),
    }
}

/// The octets `encode` will append for this PDU (its command_length). Cheap: sums lengths.
pub fn encoded_len(pdu: &Pdu) -> usize {
    HEADER_LEN + body_len(&pdu.body)
}

fn body_len(body: &Body) -> usize {
    match body {
        Body::GenericNack
        | Body::Unbind
        | Body::UnbindResp
        | Body::EnquireLink
        | Body::EnquireLinkResp
        | Body::CancelSmResp
        | Body::ReplaceSmResp => 0,
        Body::BindReceiver(b) | Body::BindTransmitter(b) | Body::BindTransceiver(b) => {
            cstr_len(&b.system_id)
                + cstr_len(&b.password)
                + cstr_len(&b.system_type)
                + 3
                + cstr_len(&b.address_range)
        }
        Body::BindReceiverResp(b) | Body::BindTransmitterResp(b) | Body::BindTransceiverResp(b) => {
            cstr_len(&b.system_id) + b.tlvs.as_wire().len()
        }
        Body::Outbind(o) => cstr_len(&o.system_id) + cstr_len(&o.password),
        Body::SubmitSm(s) | Body::DeliverSm(s) => {
            cstr_len(&s.service_type)
                + 2
                + cstr_len(&s.source_addr)
                + 2
                + cstr_len(&s.destination_addr)
                + 3
                + cstr_len(&s.schedule_delivery_time)
                + cstr_len(&s.validity_period)
                + 5
                + s.short_message.len()
                + s.tlvs.as_wire().len()
        }
        Body::SubmitSmResp(r) | Body::DeliverSmResp(r) => cstr_len(&r.message_id),
        Body::SubmitMulti(s) => {
            cstr_len(&s.service_type)
                + 2
                + cstr_len(&s.source_addr)
                + 1
                + s.dest_addresses.iter().map(dest_len).sum::<usize>()
                + 3
                + cstr_len(&s.schedule_delivery_time)
                + cstr_len(&s.validity_period)
                + 5
                + s.short_message.len()
                + s.tlvs.as_wire().len()
        }
        Body::SubmitMultiResp(r) => {
            cstr_len(&r.message_id)
                + 1
                + r.unsuccess_smes
                    .iter()
                    .map(|u| 2 + cstr_len(&u.addr) + 4)
                    .sum::<usize>()
        }
        Body::DataSm(d) => {
            cstr_len(&d.service_type)
                + 2
                + cstr_len(&d.source_addr)
                + 2
                + cstr_len(&d.destination_addr)
                + 3
                + d.tlvs.as_wire().len()
        }
        Body::DataSmResp(r) => cstr_len(&r.message_id) + r.tlvs.as_wire().len(),
        Body::QuerySm(q) => cstr_len(&q.message_id) + 2 + cstr_len(&q.source_addr),
        Body::QuerySmResp(q) => cstr_len(&q.message_id) + cstr_len(&q.final_date) + 2,
        Body::CancelSm(c) => {
            cstr_len(&c.service_type)
                + cstr_len(&c.message_id)
                + 2
                + cstr_len(&c.source_addr)
                + 2
                + cstr_len(&c.destination_addr)
        }
        Body::ReplaceSm(s) => {
            cstr_len(&s.message_id)
                + 2
                + cstr_len(&s.source_addr)
                + cstr_len(&s.schedule_delivery_time)
                + cstr_len(&s.validity_period)
                + 3
                + s.short_message.len()
        }
        Body::AlertNotification(a) => {
            2 + cstr_len(&a.source_addr) + 2 + cstr_len(&a.esme_addr) + a.tlvs.as_wire().len()
        }
    }
}

fn check_time(field: Field, t: &Time17) -> Result<(), EncodeError> {
    match t.as_bytes() {
        [] => Ok(()),
        [.., b'+' | b'-' | b'R'] if t.len() == 16 => Ok(()),
        _ => Err(EncodeError::TimeFormat {
            field,
            len: t.len(),
        }),
    }
}

fn check_short_message(sm: &[u8], tlvs: &Tlvs) -> Result<(), EncodeError> {
    if sm.len() > MAX_SHORT_MESSAGE_LEN {
        return Err(EncodeError::ShortMessageTooLong { len: sm.len() });
    }
    if !sm.is_empty() && tlvs.get(super::tlv::tag::MESSAGE_PAYLOAD).is_some() {
        return Err(EncodeError::ShortMessageAndPayload);
    }
    Ok(())
}

fn check_tlvs(tlvs: &Tlvs) -> Result<(), EncodeError> {
    for t in tlvs.iter() {
        if let Some((min, max)) = value_len_bounds(t.tag)
            && !(min..=max).contains(&t.value.len())
        {
            return Err(EncodeError::TlvLength {
                tag: t.tag,
                len: t.value.len(),
                min,
                max,
            });
        }
    }
    Ok(())
}

/// Everything the types cannot express; runs before a single octet is written.
fn validate(body: &Body) -> Result<(), EncodeError> {
    match body {
        Body::SubmitSm(s) | Body::DeliverSm(s) => {
            check_time(Field::ScheduleDeliveryTime, &s.schedule_delivery_time)?;
            check_time(Field::ValidityPeriod, &s.validity_period)?;
            check_short_message(&s.short_message, &s.tlvs)?;
            check_tlvs(&s.tlvs)
        }
        Body::SubmitMulti(s) => {
            let count = s.dest_addresses.len();
            if !(1..=MAX_DESTS).contains(&count) {
                return Err(EncodeError::DestinationCount { count });
            }
            check_time(Field::ScheduleDeliveryTime, &s.schedule_delivery_time)?;
            check_time(Field::ValidityPeriod, &s.validity_period)?;
            check_short_message(&s.short_message, &s.tlvs)?;
            check_tlvs(&s.tlvs)
        }
        Body::SubmitMultiResp(r) if r.unsuccess_smes.len() > MAX_DESTS => {
            Err(EncodeError::UnsuccessCount {
                count: r.unsuccess_smes.len(),
            })
        }
        Body::ReplaceSm(s) => {
            check_time(Field::ScheduleDeliveryTime, &s.schedule_delivery_time)?;
            check_time(Field::ValidityPeriod, &s.validity_period)?;
            check_short_message(&s.short_message, &Tlvs::new())
        }
        Body::QuerySmResp(q) => check_time(Field::FinalDate, &q.final_date),
        Body::BindReceiverResp(b) | Body::BindTransmitterResp(b) | Body::BindTransceiverResp(b) => {
            check_tlvs(&b.tlvs)
        }
        Body::DataSm(d) => check_tlvs(&d.tlvs),
        Body::DataSmResp(d) => check_tlvs(&d.tlvs),
        Body::AlertNotification(a) => check_tlvs(&a.tlvs),
        _ => Ok(()),
    }
}

/// Appends the encoded PDU to `out` (command_length computed). Allocation-free when `out` has
/// `encoded_len(pdu)` spare capacity; on error `out` is left unchanged.
pub fn encode(pdu: &Pdu, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    validate(&pdu.body)?;
    let len = encoded_len(pdu);
    let command_length = u32::try_from(len).map_err(|_| EncodeError::PduTooLong { len })?;
    let start = out.len();
    // One resize, then plain stores into a slice: `Vec::push` per field re-checks capacity
    // every time, which was a third of the encode cost. The zero fill also provides every
    // C-string's NUL.
    out.resize(start + len, 0);
    let mut w = Writer {
        buf: &mut out[start..],
        pos: 0,
    };
    w.bytes(&command_length.to_be_bytes());
    w.bytes(&pdu.body.command_id().to_be_bytes());
    w.bytes(&pdu.command_status.to_be_bytes());
    w.bytes(&pdu.sequence_number.to_be_bytes());
    encode_body(&pdu.body, &mut w);
    // `encoded_len` and `encode_body` describe the same layout; the tests hold them together.
    debug_assert_eq!(w.pos, len, "encoded_len disagrees with encode");
    Ok(())
}

/// A cursor over exactly `encoded_len` zeroed octets. An index panic here would mean
/// `encoded_len` and `encode_body` disagree: a programmer error, not bad input.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    /// Empty slices are the common case (service_type, times, TLVs) and skip the `memcpy`
    /// call entirely; for fixed-size arrays the check folds away.
    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }

    #[inline(always)]
    fn u8(&mut self, v: u8) {
        self.buf[self.pos] = v;
        self.pos += 1;
    }

    /// The value; its NUL is already there (the buffer is zero-filled).
    #[inline(always)]
    fn cstr<const N: usize>(&mut self, s: &COctet<N>) {
        self.bytes(s.as_bytes());
        self.pos += 1;
    }

    #[inline(always)]
    fn sm(&mut self, sm: &[u8]) {
        // validate() bounded it to 254.
        self.u8(sm.len() as u8);
        self.bytes(sm);
    }
}

fn encode_body(body: &Body, w: &mut Writer<'_>) {
    match body {
        Body::GenericNack
        | Body::Unbind
        | Body::UnbindResp
        | Body::EnquireLink
        | Body::EnquireLinkResp
        | Body::CancelSmResp
        | Body::ReplaceSmResp => {}
        Body::BindReceiver(b) | Body::BindTransmitter(b) | Body::BindTransceiver(b) => {
            w.cstr(&b.system_id);
            w.cstr(&b.password);
            w.cstr(&b.system_type);
            w.bytes(&[b.interface_version, b.addr_ton, b.addr_npi]);
            w.cstr(&b.address_range);
        }
        Body::BindReceiverResp(b) | Body::BindTransmitterResp(b) | Body::BindTransceiverResp(b) => {
            w.cstr(&b.system_id);
            w.bytes(b.tlvs.as_wire());
        }
        Body::Outbind(o) => {
            w.cstr(&o.system_id);
            w.cstr(&o.password);
        }
        Body::SubmitSm(s) | Body::DeliverSm(s) => {
            w.cstr(&s.service_type);
            w.bytes(&[s.source_addr_ton, s.source_addr_npi]);
            w.cstr(&s.source_addr);
            w.bytes(&[s.dest_addr_ton, s.dest_addr_npi]);
            w.cstr(&s.destination_addr);
            w.bytes(&[s.esm_class, s.protocol_id, s.priority_flag]);
            w.cstr(&s.schedule_delivery_time);
            w.cstr(&s.validity_period);
            w.bytes(&[
                s.registered_delivery,
                s.replace_if_present_flag,
                s.data_coding,
                s.sm_default_msg_id,
            ]);
            w.sm(&s.short_message);
            w.bytes(s.tlvs.as_wire());
        }
        Body::SubmitSmResp(r) | Body::DeliverSmResp(r) => w.cstr(&r.message_id),
        Body::SubmitMulti(s) => {
            w.cstr(&s.service_type);
            w.bytes(&[s.source_addr_ton, s.source_addr_npi]);
            w.cstr(&s.source_addr);
            w.u8(s.dest_addresses.len() as u8);
            for d in &s.dest_addresses {
                match d {
                    DestAddress::Sme { ton, npi, addr } => {
                        w.bytes(&[1, *ton, *npi]);
                        w.cstr(addr);
                    }
                    DestAddress::DistributionList(name) => {
                        w.u8(2);
                        w.cstr(name);
                    }
                }
            }
            w.bytes(&[s.esm_class, s.protocol_id, s.priority_flag]);
            w.cstr(&s.schedule_delivery_time);
            w.cstr(&s.validity_period);
            w.bytes(&[
                s.registered_delivery,
                s.replace_if_present_flag,
                s.data_coding,
                s.sm_default_msg_id,
            ]);
            w.sm(&s.short_message);
            w.bytes(s.tlvs.as_wire());
        }
        Body::SubmitMultiResp(r) => {
            w.cstr(&r.message_id);
            w.u8(r.unsuccess_smes.len() as u8);
            for u in &r.unsuccess_smes {
                w.bytes(&[u.ton, u.npi]);
                w.cstr(&u.addr);
                w.bytes(&u.error_status_code.to_be_bytes());
            }
        }
        Body::DataSm(d) => {
            w.cstr(&d.service_type);
            w.bytes(&[d.source_addr_ton, d.source_addr_npi]);
            w.cstr(&d.source_addr);
            w.bytes(&[d.dest_addr_ton, d.dest_addr_npi]);
            w.cstr(&d.destination_addr);
            w.bytes(&[d.esm_class, d.registered_delivery, d.data_coding]);
            w.bytes(d.tlvs.as_wire());
        }
        Body::DataSmResp(r) => {
            w.cstr(&r.message_id);
            w.bytes(r.tlvs.as_wire());
        }
        Body::QuerySm(q) => {
            w.cstr(&q.message_id);
            w.bytes(&[q.source_addr_ton, q.source_addr_npi]);
            w.cstr(&q.source_addr);
        }
        Body::QuerySmResp(q) => {
            w.cstr(&q.message_id);
            w.cstr(&q.final_date);
            w.bytes(&[q.message_state, q.error_code]);
        }
        Body::CancelSm(c) => {
            w.cstr(&c.service_type);
            w.cstr(&c.message_id);
            w.bytes(&[c.source_addr_ton, c.source_addr_npi]);
            w.cstr(&c.source_addr);
            w.bytes(&[c.dest_addr_ton, c.dest_addr_npi]);
            w.cstr(&c.destination_addr);
        }
        Body::ReplaceSm(s) => {
            w.cstr(&s.message_id);
            w.bytes(&[s.source_addr_ton, s.source_addr_npi]);
            w.cstr(&s.source_addr);
            w.cstr(&s.schedule_delivery_time);
            w.cstr(&s.validity_period);
            w.bytes(&[s.registered_delivery, s.sm_default_msg_id]);
            w.sm(&s.short_message);
        }
        Body::AlertNotification(a) => {
            w.bytes(&[a.source_addr_ton, a.source_addr_npi]);
            w.cstr(&a.source_addr);
            w.bytes(&[a.esme_addr_ton, a.esme_addr_npi]);
            w.cstr(&a.esme_addr);
            w.bytes(a.tlvs.as_wire());
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
