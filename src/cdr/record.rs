//! The CDR schema: one [`CdrRecord`] per message, with one [`CdrPart`] per SMPP segment.
//!
//! Built from a [`MessageRecord`] once it is final (or its TTL ran out). The message text is
//! never copied: CDRs go to long-lived storage (S3) and must not hold message content.
//! The field list with types and meaning is in `docs/operations.md` (`## CDR export`); keep
//! both in step, and bump [`SCHEMA_VERSION`] on any incompatible change.

use serde::{Deserialize, Serialize};

use crate::state::model::{Encoding, MessageRecord, Status};

/// Version of the CDR layout, written in every record as `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the CDR was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The message reached a final status.
    Final,
    /// The record's TTL ran out while the message was still `accepted`/`submitted`.
    Ttl,
}

/// One part (SMPP segment) of a CDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrPart {
    pub index: u16,
    pub status: Status,
    pub link_id: Option<u32>,
    pub smsc_message_id: Option<String>,
    pub error_code: Option<u32>,
    pub submitted_at_ms: Option<u64>,
    /// Raw receipt `stat` (e.g. `DELIVRD`), if a receipt made the part final.
    pub receipt_stat: Option<String>,
    pub receipt_err: Option<String>,
    pub receipt_done_at_ms: Option<u64>,
    pub receipt_received_at_ms: Option<u64>,
}

/// One call detail record: everything about a finished message except its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrRecord {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// Gateway instance that wrote the CDR.
    pub instance: String,
    pub app_id: u64,
    pub transaction_id: String,
    pub esme: u32,
    pub link_id: Option<u32>,
    pub source: String,
    pub destination: String,
    pub encoding: Encoding,
    pub status: Status,
    pub closed_by: ClosedBy,
    pub parts_count: u16,
    pub created_at_ms: u64,
    /// When the message became final (its last update), or the TTL sweep time for `ttl`.
    pub final_at_ms: u64,
    pub parts: Vec<CdrPart>,
}

impl CdrRecord {
    /// The CDR for `m`, or `None` while `m` is neither final nor past its TTL (`expires_at_ms`,
    /// 0 = no TTL known) at `now_ms`.
    pub fn from_message(m: &MessageRecord, instance: &str, now_ms: u64) -> Option<CdrRecord> {
        let closed_by = if m.status.is_final() {
            ClosedBy::Final
        } else if m.expires_at_ms != 0 && now_ms >= m.expires_at_ms {
            ClosedBy::Ttl
        } else {
            return None;
        };
        let final_at_ms = match closed_by {
            ClosedBy::Final => m.updated_at_ms,
            ClosedBy::Ttl => now_ms,
        };
        let parts = m
            .parts
            .iter()
            .map(|p| CdrPart {
                index: p.index,
                status: p.status,
                link_id: p.link_id,
                smsc_message_id: p.smsc_message_id.clone(),
                error_code: p.error_code,
                submitted_at_ms: p.submitted_at_ms,
                receipt_stat: p.receipt.as_ref().map(|r| r.stat.clone()),
                receipt_err: p.receipt.as_ref().and_then(|r| r.err.clone()),
                receipt_done_at_ms: p.receipt.as_ref().and_then(|r| r.done_at_ms),
                receipt_received_at_ms: p.receipt.as_ref().map(|r| r.received_at_ms),
            })
            .collect::<Vec<_>>();
        Some(CdrRecord {
            v: SCHEMA_VERSION,
            instance: instance.to_owned(),
            app_id: m.app_id,
            transaction_id: m.transaction_id.clone(),
            esme: m.esme,
            link_id: m.link_id,
            source: m.source.clone(),
            destination: m.destination.clone(),
            encoding: m.encoding,
            status: m.status,
            closed_by,
            // At most MAX_PARTS (255) parts, so this never saturates on a valid record.
            parts_count: u16::try_from(parts.len()).unwrap_or(u16::MAX),
            created_at_ms: m.created_at_ms,
            final_at_ms,
            parts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::{MessageKey, ReceiptInfo};

    fn msg() -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(7, "tx-1"),
            3,
            "ACME",
            "+491511234567",
            Encoding::Gsm7,
            "secret text",
            2,
            1_000,
        )
    }

    #[test]
    fn not_final_and_not_expired_gives_none() {
        let mut m = msg();
        m.expires_at_ms = 5_000;
        assert!(CdrRecord::from_message(&m, "i1", 4_999).is_none());
        let c = CdrRecord::from_message(&m, "i1", 5_000).unwrap();
        assert_eq!(c.closed_by, ClosedBy::Ttl);
        assert_eq!(c.final_at_ms, 5_000);
    }

    #[test]
    fn final_record_has_parts_and_no_text() {
        let mut m = msg();
        m.status = Status::Delivered;
        m.updated_at_ms = 9_000;
        m.parts[1].status = Status::Delivered;
        m.parts[1].smsc_message_id = Some("abc".into());
        m.parts[1].receipt = Some(ReceiptInfo {
            status: Status::Delivered,
            stat: "DELIVRD".into(),
            err: Some("000".into()),
            done_at_ms: Some(8_000),
            received_at_ms: 8_500,
        });
        let c = CdrRecord::from_message(&m, "i1", 9_001).unwrap();
        assert_eq!(c.closed_by, ClosedBy::Final);
        assert_eq!(c.final_at_ms, 9_000);
        assert_eq!(c.parts_count, 2);
        assert_eq!(c.parts[1].receipt_stat.as_deref(), Some("DELIVRD"));
        assert_eq!(c.parts[1].receipt_received_at_ms, Some(8_500));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("secret"), "{json}");
    }
}
