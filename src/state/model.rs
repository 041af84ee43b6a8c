//! The message state model: one [`MessageRecord`] per accepted message, with one
//! [`PartRecord`] per SMPP segment, and the forward-only status rules.
//!
//! This module is pure: no I/O, no clock. Every timestamp comes from the caller.

use serde::{Deserialize, Serialize};

/// Longest `transaction_id` the store accepts, in bytes. The API should reject longer ids with a
/// 422 before they get here; the store checks again because the key layout depends on it.
pub const MAX_TRANSACTION_ID_LEN: usize = 128;

/// Longest SMSC message id (SMPP v3.4 allows 65 octets incl. NUL; we leave room for
/// normalised forms).
pub const MAX_SMSC_ID_LEN: usize = 128;

/// Most parts a message may have (8-bit UDH concatenation allows 255).
pub const MAX_PARTS: usize = 255;

/// Status of a message or of one of its parts.
///
/// Order of life: `Accepted` → `Submitted` → one final state. `Delivered`, `Undeliverable`,
/// `Expired`, `Rejected`, `Failed` and `Unknown` are final: once reached they never change.
/// `Unknown` is final because it is used when the `submit_sm_resp` was lost with its session, so
/// no SMSC id exists to correlate a later receipt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded by the gateway, not (fully) submitted to an SMSC yet.
    Accepted,
    /// Every part got a `submit_sm_resp` OK; waiting for receipts.
    Submitted,
    /// Delivered to the handset (every part).
    Delivered,
    /// The SMSC reported it could not deliver.
    Undeliverable,
    /// The SMSC (or our TTL sweep) gave up waiting for delivery.
    Expired,
    /// Refused: by the SMSC (`submit_sm_resp` error) or by its receipt.
    Rejected,
    /// The gateway could not submit it (no route, retries exhausted).
    Failed,
    /// Outcome unknowable (response lost with its session; SMSC said `UNKNOWN`).
    Unknown,
}

impl Status {
    /// All statuses, in wire-code order.
    pub const ALL: [Status; 8] = [
        Status::Accepted,
        Status::Submitted,
        Status::Delivered,
        Status::Undeliverable,
        Status::Expired,
        Status::Rejected,
        Status::Failed,
        Status::Unknown,
    ];

    /// Lower-case name used in the API and in CDRs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Submitted => "submitted",
            Status::Delivered => "delivered",
            Status::Undeliverable => "undeliverable",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }

    /// True for the states that never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Accepted | Status::Submitted)
    }

    /// Position in the forward order: all final states share the last rank.
    fn rank(self) -> u8 {
        match self {
            Status::Accepted => 0,
            Status::Submitted => 1,
            _ => 2,
        }
    }

    /// Stable one-byte code for the binary encoding (never reorder).
    pub fn code(self) -> u8 {
        match self {
            Status::Accepted => 0,
            Status::Submitted => 1,
            Status::Delivered => 2,
            Status::Undeliverable => 3,
            Status::Expired => 4,
            Status::Rejected => 5,
            Status::Failed => 6,
            Status::Unknown => 7,
        }
    }

    /// Inverse of [`Status::code`].
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.get(usize::from(code)).copied()
    }

    /// Moves `self` to `to` if that is a forward step.
    ///
    /// * `Ok(true)`: changed.
    /// * `Ok(false)`: already in `to` (a repeated event, harmless).
    /// * `Err(_)`: refused, because `to` is behind `self`, or `self` is final and `to` is a
    ///   different state. The caller keeps the current state; a refused transition is never an
    ///   error worth failing a request for, only worth logging.
    pub fn advance(&mut self, to: Status) -> Result<bool, TransitionRefused> {
        if *self == to {
            return Ok(false);
        }
        if self.is_final() || to.rank() < self.rank() {
            return Err(TransitionRefused { from: *self, to });
        }
        *self = to;
        Ok(true)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition that would have moved a status backwards or out of a final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("status transition {from} -> {to} refused (forward only, final states are final)")]
pub struct TransitionRefused {
    /// Current state, kept.
    pub from: Status,
    /// Requested state, ignored.
    pub to: Status,
}

/// Text encoding chosen for the message (needed to resubmit after a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GSM 03.38 default alphabet (+ extension table).
    Gsm7,
    /// ISO-8859-1.
    Latin1,
    /// UCS-2 (UTF-16BE).
    Ucs2,
}

impl Encoding {
    /// Stable one-byte code for the binary encoding.
    pub fn code(self) -> u8 {
        match self {
            Encoding::Gsm7 => 0,
            Encoding::Latin1 => 1,
            Encoding::Ucs2 => 2,
        }
    }

    /// Inverse of [`Encoding::code`].
    pub fn from_code(code: u8) -> Option<Encoding> {
        match code {
            0 => Some(Encoding::Gsm7),
            1 => Some(Encoding::Latin1),
            2 => Some(Encoding::Ucs2),
            _ => None,
        }
    }
}

/// Identity of a message record: two apps may reuse the same `transaction_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageKey {
    /// Application (tenant) that sent the message.
    pub app_id: u64,
    /// The client's (or generated) transaction id, at most [`MAX_TRANSACTION_ID_LEN`] bytes.
    pub transaction_id: String,
}

impl MessageKey {
    /// Builds a key.
    pub fn new(app_id: u64, transaction_id: impl Into<String>) -> MessageKey {
        MessageKey {
            app_id,
            transaction_id: transaction_id.into(),
        }
    }
}

/// A delivery receipt as applied to one part (fields already parsed by `smpp::receipt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptInfo {
    /// The part status the receipt maps to. `Submitted` for intermediate receipts (ENROUTE,
    /// ACCEPTD): they are recorded nowhere and change nothing.
    pub status: Status,
    /// The receipt's raw `stat` (e.g. `DELIVRD`), for the API and CDRs.
    pub stat: String,
    /// The receipt's raw `err` field, if any.
    pub err: Option<String>,
    /// `done date` from the receipt, as Unix ms, if it parsed.
    pub done_at_ms: Option<u64>,
    /// When the gateway received the receipt (Unix ms).
    pub received_at_ms: u64,
}

/// One SMPP segment of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// 0-based position of the part in the message.
    pub index: u16,
    /// Forward-only part status.
    pub status: Status,
    /// Link the part was submitted on.
    pub link_id: Option<u32>,
    /// SMSC message id from `submit_sm_resp`, normalised per link (see `smpp::receipt`).
    pub smsc_message_id: Option<String>,
    /// SMPP `command_status` or gateway error code of a failed submit.
    pub error_code: Option<u32>,
    /// When the `submit_sm_resp` OK was received (Unix ms).
    pub submitted_at_ms: Option<u64>,
    /// The receipt that made the part final, if one did.
    pub receipt: Option<ReceiptInfo>,
}

impl PartRecord {
    /// A new part in state `Accepted`.
    pub fn new(index: u16) -> PartRecord {
        PartRecord {
            index,
            status: Status::Accepted,
            link_id: None,
            smsc_message_id: None,
            error_code: None,
            submitted_at_ms: None,
            receipt: None,
        }
    }
}

/// Everything the gateway remembers about one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Tenant.
    pub app_id: u64,
    /// Client transaction id (unique per app).
    pub transaction_id: String,
    /// Requested target: a link id or a pool id, as the client named it.
    pub esme: u32,
    /// Link of the most recent submitted part.
    pub link_id: Option<u32>,
    /// Source address (sender id).
    pub source: String,
    /// Destination MSISDN.
    pub destination: String,
    /// Derived message status (see [`MessageRecord::derive_status`]); stored for cheap reads.
    pub status: Status,
    /// Encoding chosen at acceptance.
    pub encoding: Encoding,
    /// Message text, kept only while some part still has to be submitted (needed to resubmit
    /// after a crash) and dropped when the message leaves `Accepted`: the store does not keep
    /// message content longer than it must.
    pub text: Option<String>,
    /// One entry per segment, `parts[i].index == i`.
    pub parts: Vec<PartRecord>,
    /// Acceptance time (Unix ms).
    pub created_at_ms: u64,
    /// Last change (Unix ms).
    pub updated_at_ms: u64,
    /// When the record stops existing (Unix ms). Set by the store from its TTL on create; any
    /// value given to `create` is overwritten.
    pub expires_at_ms: u64,
    /// Per-message callback (webhook) URL.
    pub callback_url: Option<String>,
    /// When the gateway handed the message to an SMPP session (Unix ms), written durably
    /// before the first part can reach the wire ([`PartUpdate::Handed`]). Crash recovery reads
    /// it: a message still `Accepted` without it was never written to any socket and is safe
    /// to resubmit; with it, a part without an SMSC id may be on the SMSC already (never
    /// resent). Records stored before the mark existed decode as `Some(0)` ("handed at an
    /// unknown time"): for them the safe reading is the only one (unknown, never resent).
    #[serde(default = "legacy_handed")]
    pub handed_at_ms: Option<u64>,
}

/// `handed_at_ms` of a record stored before the field existed (see the field).
pub const LEGACY_HANDED_AT_MS: u64 = 0;

fn legacy_handed() -> Option<u64> {
    Some(LEGACY_HANDED_AT_MS)
}

impl MessageRecord {
    /// A freshly accepted message with `part_count` parts, all `Accepted`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_accepted(
        key: MessageKey,
        esme: u32,
        source: impl Into<String>,
        destination: impl Into<String>,
        encoding: Encoding,
        text: impl Into<String>,
        part_count: u16,
        now_ms: u64,
    ) -> MessageRecord {
        MessageRecord {
            app_id: key.app_id,
            transaction_id: key.transaction_id,
            esme,
            link_id: None,
            source: source.into(),
            destination: destination.into(),
            status: Status::Accepted,
            encoding,
            text: Some(text.into()),
            parts: (0..part_count).map(PartRecord::new).collect(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            expires_at_ms: 0,
            callback_url: None,
            handed_at_ms: None,
        }
    }

    /// The record's key.
    pub fn key(&self) -> MessageKey {
        MessageKey::new(self.app_id, self.transaction_id.clone())
    }

    /// Checks the invariants the store relies on. Used by `create` on every backend.
    pub fn validate(&self) -> Result<(), String> {
        if self.transaction_id.is_empty() || self.transaction_id.len() > MAX_TRANSACTION_ID_LEN {
            return Err(format!(
                "transaction_id must be 1..={MAX_TRANSACTION_ID_LEN} bytes"
            ));
        }
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(format!("a message has 1..={MAX_PARTS} parts"));
        }
        for (i, p) in self.parts.iter().enumerate() {
            if usize::from(p.index) != i {
                return Err(format!("part {i} has index {}", p.index));
            }
            if let Some(id) = &p.smsc_message_id
                && (id.is_empty() || id.len() > MAX_SMSC_ID_LEN)
            {
                return Err(format!(
                    "part {i}: smsc id must be 1..={MAX_SMSC_ID_LEN} bytes"
                ));
            }
        }
        Ok(())
    }

    /// Message status derived from the parts. The rule (documented for the API):
    ///
    /// * some part still `Accepted` (and not every part final) → `Accepted`;
    /// * otherwise some part `Submitted` → `Submitted`;
    /// * every part final and all `Delivered` → `Delivered`;
    /// * every part final, some not delivered: if all the non-delivered parts share one status,
    ///   that status (e.g. every failing part `Rejected` → `Rejected`), else `Undeliverable`
    ///   (mixed failures: the message as a whole did not arrive).
    ///
    /// Parts only move forward, so the derived status also only moves forward.
    pub fn derive_status(&self) -> Status {
        if self.parts.iter().any(|p| p.status == Status::Accepted) {
            return Status::Accepted;
        }
        if self.parts.iter().any(|p| p.status == Status::Submitted) {
            return Status::Submitted;
        }
        let mut failed = self
            .parts
            .iter()
            .map(|p| p.status)
            .filter(|s| *s != Status::Delivered);
        match failed.next() {
            None => Status::Delivered,
            Some(first) => {
                if failed.all(|s| s == first) {
                    first
                } else {
                    Status::Undeliverable
                }
            }
        }
    }

    /// Recomputes `status` from the parts, drops the text once no part needs submitting, and
    /// stamps `updated_at_ms`. Returns whether the message status changed.
    pub fn refresh(&mut self, now_ms: u64) -> bool {
        let derived = self.derive_status();
        // derive_status is monotone because parts are; `advance` double-checks it.
        let changed = self.status.advance(derived).unwrap_or(false);
        if self.status != Status::Accepted {
            self.text = None;
        }
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        changed
    }

    /// Applies `updates` in order ([`MessageRecord::apply`]) and returns whether anything
    /// changed. For every `Submitted` that changed the record, `submitted(record, part, link,
    /// smsc id)` is called: where each backend writes the receipt index entry.
    pub fn apply_all(
        &mut self,
        updates: &[PartUpdate],
        now_ms: u64,
        mut submitted: impl FnMut(&MessageRecord, u16, u32, &str),
    ) -> bool {
        let mut changed = false;
        for u in updates {
            if self.apply(u, now_ms) {
                changed = true;
                if let PartUpdate::Submitted {
                    index,
                    link_id,
                    smsc_message_id,
                } = u
                {
                    submitted(self, *index, *link_id, smsc_message_id);
                }
            }
        }
        changed
    }

    /// Applies one update in place. Returns `true` if anything changed. Refused or repeated
    /// updates leave the record as it was (idempotent).
    pub fn apply(&mut self, update: &PartUpdate, now_ms: u64) -> bool {
        let changed = match update {
            PartUpdate::Submitted {
                index,
                link_id,
                smsc_message_id,
            } => match self.parts.get_mut(usize::from(*index)) {
                Some(p) if p.status == Status::Accepted => {
                    p.status = Status::Submitted;
                    p.link_id = Some(*link_id);
                    p.smsc_message_id = Some(smsc_message_id.clone());
                    p.submitted_at_ms = Some(now_ms);
                    self.link_id = Some(*link_id);
                    true
                }
                _ => false,
            },
            PartUpdate::Final {
                index,
                status,
                error_code,
            } => match self.parts.get_mut(usize::from(*index)) {
                Some(p) if status.is_final() => {
                    let moved = p.status.advance(*status).unwrap_or(false);
                    if moved {
                        p.error_code = *error_code;
                    }
                    moved
                }
                _ => false,
            },
            // Only while nothing is final or submitted yet would a missing mark be read as
            // "never sent", so that is the only time it is worth writing; set once, never
            // moved (the first hand-over is the one that counts).
            PartUpdate::Handed => {
                if self.handed_at_ms.is_none() && self.status == Status::Accepted {
                    self.handed_at_ms = Some(now_ms);
                    true
                } else {
                    false
                }
            }
            PartUpdate::AllPending { status, error_code } => {
                let mut any = false;
                if status.is_final() {
                    for p in &mut self.parts {
                        if p.status.advance(*status).unwrap_or(false) {
                            p.error_code = *error_code;
                            any = true;
                        }
                    }
                }
                any
            }
        };
        if changed {
            self.refresh(now_ms);
        }
        changed
    }

    /// Applies a receipt to part `index`. Returns `true` if the part changed. Intermediate
    /// receipts (status `Submitted`), repeats and receipts for already-final parts change
    /// nothing: the first final word wins.
    pub fn apply_receipt(&mut self, index: u16, receipt: &ReceiptInfo, now_ms: u64) -> bool {
        let Some(p) = self.parts.get_mut(usize::from(index)) else {
            return false;
        };
        if !receipt.status.is_final() || p.status.is_final() {
            return false;
        }
        if p.status.advance(receipt.status).unwrap_or(false) {
            p.receipt = Some(receipt.clone());
            self.refresh(now_ms);
            true
        } else {
            false
        }
    }
}

/// A change to a message's parts, applied forward-only by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartUpdate {
    /// `submit_sm_resp` OK for part `index`: records link and SMSC id, and (atomically in the
    /// same write) the `(link_id, smsc_message_id)` → part index used by receipts. Ignored if
    /// the part is no longer `Accepted`.
    Submitted {
        /// Part index.
        index: u16,
        /// Link the part went out on.
        link_id: u32,
        /// Normalised SMSC message id (1..=[`MAX_SMSC_ID_LEN`] bytes).
        smsc_message_id: String,
    },
    /// A final outcome for part `index` from the submit path (SMSC error → `Rejected`, no
    /// route/retries exhausted → `Failed`, resp lost → `Unknown`). Non-final statuses are ignored.
    Final {
        /// Part index.
        index: u16,
        /// Final status.
        status: Status,
        /// SMPP `command_status` or gateway code.
        error_code: Option<u32>,
    },
    /// Message-level: the message is about to be handed to an SMPP session (sets
    /// [`MessageRecord::handed_at_ms`] once; a no-op when already set or when the message has
    /// left `Accepted`). The pipeline awaits it before the first part can reach the wire, and
    /// crash resubmission uses `changed == true` of this update as its "only once" guard.
    Handed,
    /// A final outcome for every part not yet final (e.g. the whole message failed before
    /// submission).
    AllPending {
        /// Final status.
        status: Status,
        /// Error code recorded on each affected part.
        error_code: Option<u32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(parts: u16) -> MessageRecord {
        MessageRecord::new_accepted(
            MessageKey::new(1, "t"),
            7,
            "src",
            "+100",
            Encoding::Gsm7,
            "hi",
            parts,
            1000,
        )
    }

    fn receipt(status: Status) -> ReceiptInfo {
        ReceiptInfo {
            status,
            stat: "X".into(),
            err: None,
            done_at_ms: None,
            received_at_ms: 5,
        }
    }

    #[test]
    fn forward_only() {
        let mut s = Status::Accepted;
        assert_eq!(s.advance(Status::Submitted), Ok(true));
        assert_eq!(s.advance(Status::Submitted), Ok(false));
        assert!(s.advance(Status::Accepted).is_err());
        assert_eq!(s.advance(Status::Delivered), Ok(true));
        assert!(s.advance(Status::Undeliverable).is_err());
        assert!(s.advance(Status::Submitted).is_err());
        assert_eq!(s, Status::Delivered);
        // Accepted may jump straight to a final state (rejected before submit).
        let mut s = Status::Accepted;
        assert_eq!(s.advance(Status::Failed), Ok(true));
    }

    #[test]
    fn codes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(8), None);
    }

    #[test]
    fn multipart_delivered_only_when_all_parts_are() {
        let mut r = rec(2);
        for i in 0..2 {
            assert!(r.apply(
                &PartUpdate::Submitted {
                    index: i,
                    link_id: 3,
                    smsc_message_id: format!("id{i}"),
                },
                2000,
            ));
        }
        assert_eq!(r.status, Status::Submitted);
        assert_eq!(r.text, None, "text dropped once fully submitted");
        assert!(r.apply_receipt(0, &receipt(Status::Delivered), 3000));
        assert_eq!(r.status, Status::Submitted);
        assert!(!r.apply_receipt(0, &receipt(Status::Delivered), 3001));
        assert!(r.apply_receipt(1, &receipt(Status::Delivered), 3002));
        assert_eq!(r.status, Status::Delivered);
        assert_eq!(r.updated_at_ms, 3002);
    }

    #[test]
    fn text_kept_while_a_part_is_pending() {
        let mut r = rec(2);
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 3,
                smsc_message_id: "a".into(),
            },
            2000,
        );
        assert_eq!(r.status, Status::Accepted);
        assert_eq!(r.text.as_deref(), Some("hi"));
    }

    #[test]
    fn mixed_failures_are_undeliverable_uniform_keep_their_status() {
        let mut r = rec(3);
        r.apply(
            &PartUpdate::Final {
                index: 0,
                status: Status::Rejected,
                error_code: Some(0x45),
            },
            1,
        );
        r.apply(
            &PartUpdate::Submitted {
                index: 1,
                link_id: 1,
                smsc_message_id: "b".into(),
            },
            1,
        );
        r.apply(
            &PartUpdate::Submitted {
                index: 2,
                link_id: 1,
                smsc_message_id: "c".into(),
            },
            1,
        );
        r.apply_receipt(1, &receipt(Status::Delivered), 2);
        assert_eq!(r.status, Status::Submitted);
        r.apply_receipt(2, &receipt(Status::Rejected), 2);
        assert_eq!(r.status, Status::Rejected);

        let mut r = rec(2);
        r.apply(
            &PartUpdate::Final {
                index: 0,
                status: Status::Rejected,
                error_code: None,
            },
            1,
        );
        r.apply(
            &PartUpdate::Final {
                index: 1,
                status: Status::Failed,
                error_code: None,
            },
            1,
        );
        assert_eq!(r.status, Status::Undeliverable);
    }

    #[test]
    fn updates_are_idempotent_and_forward_only() {
        let mut r = rec(1);
        let sub = PartUpdate::Submitted {
            index: 0,
            link_id: 1,
            smsc_message_id: "a".into(),
        };
        assert!(r.apply(&sub, 1));
        assert!(!r.apply(&sub, 2));
        // A different id for an already-submitted part is ignored: the first answer wins.
        assert!(!r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: "zzz".into()
            },
            3
        ));
        assert_eq!(r.parts[0].smsc_message_id.as_deref(), Some("a"));
        assert!(r.apply_receipt(0, &receipt(Status::Expired), 4));
        assert!(!r.apply_receipt(0, &receipt(Status::Delivered), 5));
        assert_eq!(r.status, Status::Expired);
        // Out-of-range index and non-final "final" updates are ignored, not panics.
        assert!(!r.apply_receipt(9, &receipt(Status::Delivered), 6));
        assert!(!r.apply(
            &PartUpdate::Final {
                index: 0,
                status: Status::Submitted,
                error_code: None
            },
            7
        ));
    }

    #[test]
    fn all_pending_fails_only_non_final_parts() {
        let mut r = rec(2);
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 1,
                smsc_message_id: "a".into(),
            },
            1,
        );
        r.apply_receipt(0, &receipt(Status::Delivered), 2);
        r.apply(
            &PartUpdate::AllPending {
                status: Status::Failed,
                error_code: Some(1),
            },
            3,
        );
        assert_eq!(r.parts[0].status, Status::Delivered);
        assert_eq!(r.parts[1].status, Status::Failed);
        assert_eq!(r.status, Status::Failed);
    }
}
