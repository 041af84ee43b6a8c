//! command_status values (SMPP v3.4 section 5.1.3), their names and short descriptions.
//!
//! Values not listed here (0x0400..=0x04FF are SMSC vendor specific, the rest reserved) still
//! travel as plain `u32`; `name` answers "UNKNOWN" / "VENDOR_SPECIFIC" for them.

pub const ESME_ROK: u32 = 0x0000_0000;
pub const ESME_RINVMSGLEN: u32 = 0x0000_0001;
pub const ESME_RINVCMDLEN: u32 = 0x0000_0002;
pub const ESME_RINVCMDID: u32 = 0x0000_0003;
pub const ESME_RINVBNDSTS: u32 = 0x0000_0004;
pub const ESME_RALYBND: u32 = 0x0000_0005;
pub const ESME_RINVPRTFLG: u32 = 0x0000_0006;
pub const ESME_RINVREGDLVFLG: u32 = 0x0000_0007;
pub const ESME_RSYSERR: u32 = 0x0000_0008;
pub const ESME_RINVSRCADR: u32 = 0x0000_000A;
pub const ESME_RINVDSTADR: u32 = 0x0000_000B;
pub const ESME_RINVMSGID: u32 = 0x0000_000C;
pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
pub const ESME_RINVPASWD: u32 = 0x0000_000E;
pub const ESME_RINVSYSID: u32 = 0x0000_000F;
pub const ESME_RCANCELFAIL: u32 = 0x0000_0011;
pub const ESME_RREPLACEFAIL: u32 = 0x0000_0013;
pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
pub const ESME_RINVSERTYP: u32 = 0x0000_0015;
pub const ESME_RINVNUMDESTS: u32 = 0x0000_0033;
pub const ESME_RINVDLNAME: u32 = 0x0000_0034;
pub const ESME_RINVDESTFLAG: u32 = 0x0000_0040;
pub const ESME_RINVSUBREP: u32 = 0x0000_0042;
pub const ESME_RINVESMCLASS: u32 = 0x0000_0043;
pub const ESME_RCNTSUBDL: u32 = 0x0000_0044;
pub const ESME_RSUBMITFAIL: u32 = 0x0000_0045;
pub const ESME_RINVSRCTON: u32 = 0x0000_0048;
pub const ESME_RINVSRCNPI: u32 = 0x0000_0049;
pub const ESME_RINVDSTTON: u32 = 0x0000_0050;
pub const ESME_RINVDSTNPI: u32 = 0x0000_0051;
pub const ESME_RINVSYSTYP: u32 = 0x0000_0053;
pub const ESME_RINVREPFLAG: u32 = 0x0000_0054;
pub const ESME_RINVNUMMSGS: u32 = 0x0000_0055;
pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
pub const ESME_RINVSCHED: u32 = 0x0000_0061;
pub const ESME_RINVEXPIRY: u32 = 0x0000_0062;
pub const ESME_RINVDFTMSGID: u32 = 0x0000_0063;
pub const ESME_RX_T_APPN: u32 = 0x0000_0064;
pub const ESME_RX_P_APPN: u32 = 0x0000_0065;
pub const ESME_RX_R_APPN: u32 = 0x0000_0066;
pub const ESME_RQUERYFAIL: u32 = 0x0000_0067;
pub const ESME_RINVOPTPARSTREAM: u32 = 0x0000_00C0;
pub const ESME_ROPTPARNOTALLWD: u32 = 0x0000_00C1;
pub const ESME_RINVPARLEN: u32 = 0x0000_00C2;
pub const ESME_RMISSINGOPTPARAM: u32 = 0x0000_00C3;
pub const ESME_RINVOPTPARAMVAL: u32 = 0x0000_00C4;
pub const ESME_RDELIVERYFAILURE: u32 = 0x0000_00FE;
pub const ESME_RUNKNOWNERR: u32 = 0x0000_00FF;

/// Every status defined by v3.4: (value, name, description). One table so `name` and
/// `description` cannot drift apart; the test below checks it is sorted and complete.
const TABLE: &[(u32, &str, &str)] = &[
    (ESME_ROK, "ESME_ROK", "no error"),
    (
        ESME_RINVMSGLEN,
        "ESME_RINVMSGLEN",
        "message length is invalid",
    ),
    (
        ESME_RINVCMDLEN,
        "ESME_RINVCMDLEN",
        "command length is invalid",
    ),
    (ESME_RINVCMDID, "ESME_RINVCMDID", "invalid command id"),
    (
        ESME_RINVBNDSTS,
        "ESME_RINVBNDSTS",
        "incorrect bind status for given command",
    ),
    (ESME_RALYBND, "ESME_RALYBND", "ESME already in bound state"),
    (ESME_RINVPRTFLG, "ESME_RINVPRTFLG", "invalid priority flag"),
    (
        ESME_RINVREGDLVFLG,
        "ESME_RINVREGDLVFLG",
        "invalid registered delivery flag",
    ),
    (ESME_RSYSERR, "ESME_RSYSERR", "system error"),
    (ESME_RINVSRCADR, "ESME_RINVSRCADR", "invalid source address"),
    (
        ESME_RINVDSTADR,
        "ESME_RINVDSTADR",
        "invalid destination address",
    ),
    (ESME_RINVMSGID, "ESME_RINVMSGID", "message id is invalid"),
    (ESME_RBINDFAIL, "ESME_RBINDFAIL", "bind failed"),
    (ESME_RINVPASWD, "ESME_RINVPASWD", "invalid password"),
    (ESME_RINVSYSID, "ESME_RINVSYSID", "invalid system id"),
    (ESME_RCANCELFAIL, "ESME_RCANCELFAIL", "cancel_sm failed"),
    (ESME_RREPLACEFAIL, "ESME_RREPLACEFAIL", "replace_sm failed"),
    (ESME_RMSGQFUL, "ESME_RMSGQFUL", "message queue full"),
    (ESME_RINVSERTYP, "ESME_RINVSERTYP", "invalid service type"),
    (
        ESME_RINVNUMDESTS,
        "ESME_RINVNUMDESTS",
        "invalid number of destinations",
    ),
    (
        ESME_RINVDLNAME,
        "ESME_RINVDLNAME",
        "invalid distribution list name",
    ),
    (
        ESME_RINVDESTFLAG,
        "ESME_RINVDESTFLAG",
        "destination flag is invalid (submit_multi)",
    ),
    (
        ESME_RINVSUBREP,
        "ESME_RINVSUBREP",
        "invalid submit with replace request",
    ),
    (
        ESME_RINVESMCLASS,
        "ESME_RINVESMCLASS",
        "invalid esm_class field data",
    ),
    (
        ESME_RCNTSUBDL,
        "ESME_RCNTSUBDL",
        "cannot submit to distribution list",
    ),
    (
        ESME_RSUBMITFAIL,
        "ESME_RSUBMITFAIL",
        "submit_sm or submit_multi failed",
    ),
    (
        ESME_RINVSRCTON,
        "ESME_RINVSRCTON",
        "invalid source address TON",
    ),
    (
        ESME_RINVSRCNPI,
        "ESME_RINVSRCNPI",
        "invalid source address NPI",
    ),
    (
        ESME_RINVDSTTON,
        "ESME_RINVDSTTON",
        "invalid destination address TON",
    ),
    (
        ESME_RINVDSTNPI,
        "ESME_RINVDSTNPI",
        "invalid destination address NPI",
    ),
    (
        ESME_RINVSYSTYP,
        "ESME_RINVSYSTYP",
        "invalid system_type field",
    ),
    (
        ESME_RINVREPFLAG,
        "ESME_RINVREPFLAG",
        "invalid replace_if_present flag",
    ),
    (
        ESME_RINVNUMMSGS,
        "ESME_RINVNUMMSGS",
        "invalid number of messages",
    ),
    (
        ESME_RTHROTTLED,
        "ESME_RTHROTTLED",
        "throttling error (ESME exceeded allowed message limits)",
    ),
    (
        ESME_RINVSCHED,
        "ESME_RINVSCHED",
        "invalid scheduled delivery time",
    ),
    (
        ESME_RINVEXPIRY,
        "ESME_RINVEXPIRY",
        "invalid message validity period (expiry time)",
    ),
    (
        ESME_RINVDFTMSGID,
        "ESME_RINVDFTMSGID",
        "predefined message invalid or not found",
    ),
    (
        ESME_RX_T_APPN,
        "ESME_RX_T_APPN",
        "ESME receiver temporary app error code",
    ),
    (
        ESME_RX_P_APPN,
        "ESME_RX_P_APPN",
        "ESME receiver permanent app error code",
    ),
    (
        ESME_RX_R_APPN,
        "ESME_RX_R_APPN",
        "ESME receiver reject message error code",
    ),
    (
        ESME_RQUERYFAIL,
        "ESME_RQUERYFAIL",
        "query_sm request failed",
    ),
    (
        ESME_RINVOPTPARSTREAM,
        "ESME_RINVOPTPARSTREAM",
        "error in the optional part of the PDU body",
    ),
    (
        ESME_ROPTPARNOTALLWD,
        "ESME_ROPTPARNOTALLWD",
        "optional parameter not allowed",
    ),
    (
        ESME_RINVPARLEN,
        "ESME_RINVPARLEN",
        "invalid parameter length",
    ),
    (
        ESME_RMISSINGOPTPARAM,
        "ESME_RMISSINGOPTPARAM",
        "expected optional parameter missing",
    ),
    (
        ESME_RINVOPTPARAMVAL,
        "ESME_RINVOPTPARAMVAL",
        "invalid optional parameter value",
    ),
    (
        ESME_RDELIVERYFAILURE,
        "ESME_RDELIVERYFAILURE",
        "delivery failure (data_sm_resp)",
    ),
    (ESME_RUNKNOWNERR, "ESME_RUNKNOWNERR", "unknown error"),
];

fn lookup(status: u32) -> Option<&'static (u32, &'static str, &'static str)> {
    TABLE
        .binary_search_by_key(&status, |e| e.0)
        .ok()
        .map(|i| &TABLE[i])
}

/// Whether the value is in the range v3.4 reserves for SMSC vendor specific errors.
pub const fn is_vendor_specific(status: u32) -> bool {
    matches!(status, 0x0400..=0x04FF)
}

/// The spec name, e.g. `name(0x58) == "ESME_RTHROTTLED"`. Values outside the table answer
/// `"VENDOR_SPECIFIC"` (0x0400..=0x04FF) or `"UNKNOWN"` (reserved), so logs never panic or
/// allocate on an odd status.
pub fn name(status: u32) -> &'static str {
    match lookup(status) {
        Some(e) => e.1,
        None if is_vendor_specific(status) => "VENDOR_SPECIFIC",
        None => "UNKNOWN",
    }
}

/// A short human description of the status (from the spec's table).
pub fn description(status: u32) -> &'static str {
    match lookup(status) {
        Some(e) => e.2,
        None if is_vendor_specific(status) => "SMSC vendor specific error",
        None => "reserved / unknown status",
    }
}

/// Answers that mean "slow down", not "this message is bad": ESME_RTHROTTLED (0x58) and
/// ESME_RMSGQFUL (0x14). The session backs off and resubmits instead of failing the message.
pub const fn is_throttling(status: u32) -> bool {
    matches!(status, ESME_RTHROTTLED | ESME_RMSGQFUL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        for w in TABLE.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].1, w[1].1);
        }
        assert_eq!(TABLE.len(), 48);
    }

    #[test]
    fn names_match_their_values() {
        for &(v, n, d) in TABLE {
            assert_eq!(name(v), n);
            assert_eq!(description(v), d);
            assert!(n.starts_with("ESME_R"));
        }
        assert_eq!(name(0x58), "ESME_RTHROTTLED");
        assert_eq!(name(0x14), "ESME_RMSGQFUL");
        assert_eq!(name(0x09), "UNKNOWN");
        assert_eq!(name(0x0401), "VENDOR_SPECIFIC");
        assert_eq!(name(u32::MAX), "UNKNOWN");
    }

    #[test]
    fn throttling_is_exactly_0x58_and_0x14() {
        let hits: Vec<u32> = (0..0x1_0000).filter(|&s| is_throttling(s)).collect();
        assert_eq!(hits, vec![0x14, 0x58]);
    }
}
