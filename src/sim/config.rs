//! Command-line flags of `smsgw smsc-sim` and the runtime-adjustable behaviour (faults,
//! receipt settings) that the control API can change while the simulator runs.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::SimError;

/// How message ids are written (in submit_sm_resp, or in receipts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IdFormat {
    /// Decimal digits: `4711`.
    Dec,
    /// Lower-case hexadecimal: `1a2b`.
    Hex,
    /// Upper-case hexadecimal: `1A2B`.
    HexUpper,
}

/// Which parts of a delivery receipt carry the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DlrFormat {
    /// Only the `id:... stat:...` text in short_message.
    Text,
    /// Only the receipted_message_id / message_state (/ network_error_code) TLVs.
    Tlv,
    /// Both (what most SMSCs send).
    Both,
}

/// Which bound session a receipt goes to (always one of the submitter's system_id, able to
/// receive: a receiver or a transceiver bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DlrRoute {
    /// The submitting session if it can receive, else another bind of the same system_id.
    Same,
    /// A bind other than the submitting one if there is one ("receipt on another bind").
    Other,
    /// Round-robin over all receiving binds of the system_id.
    Any,
}

/// Final states the simulator can report, with the text `stat:` word, the message_state TLV
/// value (SMPP v3.4 section 5.2.28) and the `err:` code it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DlrState {
    #[serde(rename = "DELIVRD")]
    Delivered,
    #[serde(rename = "EXPIRED")]
    Expired,
    #[serde(rename = "DELETED")]
    Deleted,
    #[serde(rename = "UNDELIV")]
    Undeliverable,
    #[serde(rename = "ACCEPTD")]
    Accepted,
    #[serde(rename = "UNKNOWN")]
    Unknown,
    #[serde(rename = "REJECTD")]
    Rejected,
    #[serde(rename = "ENROUTE")]
    Enroute,
}

impl DlrState {
    pub const ALL: [DlrState; 8] = [
        DlrState::Delivered,
        DlrState::Expired,
        DlrState::Deleted,
        DlrState::Undeliverable,
        DlrState::Accepted,
        DlrState::Unknown,
        DlrState::Rejected,
        DlrState::Enroute,
    ];

    pub fn stat(self) -> &'static str {
        match self {
            DlrState::Delivered => "DELIVRD",
            DlrState::Expired => "EXPIRED",
            DlrState::Deleted => "DELETED",
            DlrState::Undeliverable => "UNDELIV",
            DlrState::Accepted => "ACCEPTD",
            DlrState::Unknown => "UNKNOWN",
            DlrState::Rejected => "REJECTD",
            DlrState::Enroute => "ENROUTE",
        }
    }

    /// message_state TLV value.
    pub fn message_state(self) -> u8 {
        match self {
            DlrState::Enroute => 1,
            DlrState::Delivered => 2,
            DlrState::Expired => 3,
            DlrState::Deleted => 4,
            DlrState::Undeliverable => 5,
            DlrState::Accepted => 6,
            DlrState::Unknown => 7,
            DlrState::Rejected => 8,
        }
    }

    /// The `err:` value (and network_error_code) the simulator reports for this state; 0 for
    /// success states. Arbitrary but stable so tests can assert on it.
    pub fn error_code(self) -> u16 {
        match self {
            DlrState::Delivered | DlrState::Accepted | DlrState::Enroute => 0,
            DlrState::Undeliverable => 1,
            DlrState::Rejected => 2,
            DlrState::Expired => 3,
            DlrState::Deleted => 4,
            DlrState::Unknown => 5,
        }
    }

    /// registered_delivery = 2 asks for a receipt on failure only.
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            DlrState::Delivered | DlrState::Accepted | DlrState::Enroute
        )
    }

    fn parse(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.stat().eq_ignore_ascii_case(word.trim()))
    }
}

/// What a malformed-PDU injection writes instead of (or before) a normal submit_sm_resp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// submit_sm_resp whose message_id is 70 octets without NUL (over the 65-octet field).
    CorruptResp,
    /// A header announcing command_length 8 (< 16): framing is lost, the ESME must close.
    BadLength,
    /// An extra request with unknown command_id 0x000000FF before the normal resp; the ESME
    /// should answer generic_nack ESME_RINVCMDID.
    UnknownCommand,
    /// submit_sm_resp carrying a sequence_number the ESME never used (instead of the real one).
    WrongSequence,
}

/// Runtime-adjustable behaviour: starts from the flags, changed by `POST /faults`, restored
/// by `POST /reset`. Connections pick up a new version at their next read batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Behaviour {
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Percentage (0..=100) of submit_sm / data_sm answered with `throttle_status`.
    pub throttle_percent: f64,
    pub throttle_status: u32,
    pub refuse_binds: bool,
    pub refuse_bind_status: u32,
    /// Stop reading from every session (writes, e.g. receipts, continue).
    pub paused: bool,
    pub id_format: IdFormat,
    pub dlr_id_format: IdFormat,
    /// Zero-pad ids to this many characters (0 = no padding), in resps and receipts.
    pub id_width: u8,
    /// Percentage (0..=100) of receipt-requesting messages that get a receipt.
    pub dlr_percent: f64,
    pub dlr_delay_ms: u64,
    pub dlr_jitter_ms: u64,
    pub dlr_states: Vec<(DlrState, u32)>,
    pub dlr_format: DlrFormat,
    pub dlr_route: DlrRoute,
}

/// Body of `POST /faults`: every field optional; present fields replace the current value.
/// `disconnect_now`, `disconnect_after_submits` and `malformed` are one-shot actions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    pub latency_ms: Option<u64>,
    pub latency_jitter_ms: Option<u64>,
    pub throttle_percent: Option<f64>,
    pub throttle_status: Option<u32>,
    pub refuse_binds: Option<bool>,
    pub refuse_bind_status: Option<u32>,
    pub paused: Option<bool>,
    pub id_format: Option<IdFormat>,
    pub dlr_id_format: Option<IdFormat>,
    pub id_width: Option<u8>,
    pub dlr_percent: Option<f64>,
    pub dlr_delay_ms: Option<u64>,
    pub dlr_jitter_ms: Option<u64>,
    /// e.g. `{"DELIVRD": 90, "UNDELIV": 10}`.
    pub dlr_states: Option<std::collections::BTreeMap<String, u32>>,
    pub dlr_format: Option<DlrFormat>,
    pub dlr_route: Option<DlrRoute>,
    /// Close every session now, without unbind.
    #[serde(default)]
    pub disconnect_now: bool,
    /// Answer this many more submits (over all sessions), then close every session.
    /// `0` cancels a pending countdown.
    pub disconnect_after_submits: Option<u64>,
    pub malformed: Option<MalformedPatch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MalformedPatch {
    pub kind: MalformedKind,
    /// How many of the next submit_sm answers are replaced (over all sessions).
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// Upper bound on response latency / receipt delay (one hour): keeps timers sane.
const MAX_DELAY_MS: u64 = 3_600_000;

impl Behaviour {
    /// Applies the persistent part of a patch, validating first so a bad patch changes nothing.
    pub fn apply(&self, p: &FaultsPatch) -> Result<Behaviour, SimError> {
        let mut b = self.clone();
        if let Some(v) = p.latency_ms {
            b.latency_ms = check_delay("latency_ms", v)?;
        }
        if let Some(v) = p.latency_jitter_ms {
            b.latency_jitter_ms = check_delay("latency_jitter_ms", v)?;
        }
        if let Some(v) = p.throttle_percent {
            b.throttle_percent = check_percent("throttle_percent", v)?;
        }
        if let Some(v) = p.throttle_status {
            b.throttle_status = v;
        }
        if let Some(v) = p.refuse_binds {
            b.refuse_binds = v;
        }
        if let Some(v) = p.refuse_bind_status {
            b.refuse_bind_status = v;
        }
        if let Some(v) = p.paused {
            b.paused = v;
        }
        if let Some(v) = p.id_format {
            b.id_format = v;
        }
        if let Some(v) = p.dlr_id_format {
            b.dlr_id_format = v;
        }
        if let Some(v) = p.id_width {
            b.id_width = check_width(v)?;
        }
        if let Some(v) = p.dlr_percent {
            b.dlr_percent = check_percent("dlr_percent", v)?;
        }
        if let Some(v) = p.dlr_delay_ms {
            b.dlr_delay_ms = check_delay("dlr_delay_ms", v)?;
        }
        if let Some(v) = p.dlr_jitter_ms {
            b.dlr_jitter_ms = check_delay("dlr_jitter_ms", v)?;
        }
        if let Some(m) = &p.dlr_states {
            let mut states = Vec::with_capacity(m.len());
            for (word, weight) in m {
                let s = DlrState::parse(word).ok_or_else(|| {
                    SimError::Config(format!("dlr_states: unknown state {word:?}"))
                })?;
                states.push((s, *weight));
            }
            b.dlr_states = check_states(states)?;
        }
        if let Some(v) = p.dlr_format {
            b.dlr_format = v;
        }
        if let Some(v) = p.dlr_route {
            b.dlr_route = v;
        }
        Ok(b)
    }

    /// Picks a final state by weight; `r` is uniform in `0..total_weight`.
    pub fn pick_state(&self, r: u64) -> DlrState {
        let mut r = r;
        for &(s, w) in &self.dlr_states {
            if r < u64::from(w) {
                return s;
            }
            r -= u64::from(w);
        }
        DlrState::Delivered
    }

    pub fn total_state_weight(&self) -> u64 {
        self.dlr_states.iter().map(|&(_, w)| u64::from(w)).sum()
    }
}

fn check_delay(name: &str, v: u64) -> Result<u64, SimError> {
    if v > MAX_DELAY_MS {
        return Err(SimError::Config(format!(
            "{name} {v} exceeds the limit of {MAX_DELAY_MS} ms"
        )));
    }
    Ok(v)
}

fn check_percent(name: &str, v: f64) -> Result<f64, SimError> {
    if !(0.0..=100.0).contains(&v) {
        return Err(SimError::Config(format!(
            "{name} {v} is not within 0..=100"
        )));
    }
    Ok(v)
}

fn check_width(v: u8) -> Result<u8, SimError> {
    // A message_id is at most 64 octets; ids beyond 32 characters help nobody.
    if v > 32 {
        return Err(SimError::Config(format!("id_width {v} exceeds 32")));
    }
    Ok(v)
}

fn check_states(states: Vec<(DlrState, u32)>) -> Result<Vec<(DlrState, u32)>, SimError> {
    let total: u64 = states.iter().map(|&(_, w)| u64::from(w)).sum();
    if total == 0 {
        return Err(SimError::Config(
            "dlr_states: the weights sum to 0".to_string(),
        ));
    }
    Ok(states)
}

/// Parses `DELIVRD=90,UNDELIV=10` (weights are relative, not necessarily percentages).
pub fn parse_states(s: &str) -> Result<Vec<(DlrState, u32)>, SimError> {
    let mut out = Vec::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let (word, weight) = match item.split_once('=') {
            Some((w, n)) => (
                w,
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| SimError::Config(format!("dlr-states: bad weight in {item:?}")))?,
            ),
            None => (item, 1),
        };
        let st = DlrState::parse(word)
            .ok_or_else(|| SimError::Config(format!("dlr-states: unknown state {word:?}")))?;
        out.push((st, weight));
    }
    check_states(out)
}

fn parse_u32_auto(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse::<u32>(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// `smsgw smsc-sim` flags. Every flag has a default that gives a well-behaved SMSC.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// SMPP listen address (port 0: the OS picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:2775")]
    pub listen: SocketAddr,
    /// Port of the HTTP control API on 127.0.0.1 (0: the OS picks one). Off when absent.
    #[arg(long)]
    pub control_port: Option<u16>,
    /// Number of event-loop threads, each with its own SO_REUSEPORT listener (0 = one per CPU).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Pin each event-loop thread to a CPU.
    #[arg(long)]
    pub pin: bool,
    /// Accept binds only with this system_id (any system_id when absent).
    #[arg(long)]
    pub system_id: Option<String>,
    /// Accept binds only with this password (any password when absent).
    #[arg(long)]
    pub password: Option<String>,
    /// system_id the simulator puts in bind responses.
    #[arg(long, default_value = "SMSCSIM")]
    pub smsc_id: String,
    /// Message id format in submit_sm_resp / data_sm_resp.
    #[arg(long, value_enum, default_value = "dec")]
    pub id_format: IdFormat,
    /// Message id format in receipts (defaults to --id-format); differ to test normalisation.
    #[arg(long, value_enum)]
    pub dlr_id_format: Option<IdFormat>,
    /// Zero-pad message ids to this width (0 = none).
    #[arg(long, default_value_t = 0)]
    pub id_width: u8,
    /// First message id number.
    #[arg(long, default_value_t = 1)]
    pub id_start: u64,
    /// Percentage of receipt-requesting messages (registered_delivery 1 or 2) that get one.
    #[arg(long, default_value_t = 100.0)]
    pub dlr_percent: f64,
    /// Delay between submit_sm_resp and the receipt.
    #[arg(long, default_value_t = 100)]
    pub dlr_delay_ms: u64,
    /// Uniform random extra delay 0..=jitter added to each receipt.
    #[arg(long, default_value_t = 0)]
    pub dlr_jitter_ms: u64,
    /// Final state mix, weights: `DELIVRD=90,UNDELIV=5,EXPIRED=5`.
    #[arg(long, default_value = "DELIVRD=100")]
    pub dlr_states: String,
    /// Receipt representation.
    #[arg(long, value_enum, default_value = "both")]
    pub dlr_format: DlrFormat,
    /// Which bind of the system_id receives the receipt.
    #[arg(long, value_enum, default_value = "same")]
    pub dlr_route: DlrRoute,
    /// Retransmit a receipt when no deliver_sm_resp came within this time.
    #[arg(long, default_value_t = 5000)]
    pub dlr_resp_timeout_ms: u64,
    /// Retransmissions of one receipt before it is dropped (counted as failed).
    #[arg(long, default_value_t = 3)]
    pub dlr_max_retries: u32,
    /// Receipts waiting (scheduled or for a receiver bind) over all sessions; more are dropped.
    #[arg(long, default_value_t = 1_000_000)]
    pub dlr_max_pending: usize,
    /// Outstanding deliver_sm (without resp) per session.
    #[arg(long, default_value_t = 64)]
    pub dlr_window: usize,
    /// Fixed delay added to every response.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Uniform random extra response delay 0..=jitter (responses may then overtake each other).
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Percentage of submit_sm / data_sm answered with --throttle-status.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_percent: f64,
    /// Status for throttled answers: 0x58 ESME_RTHROTTLED or 0x14 ESME_RMSGQFUL (or any).
    #[arg(long, default_value = "0x58", value_parser = parse_u32_auto)]
    pub throttle_status: u32,
    /// Refuse every bind with --refuse-bind-status.
    #[arg(long)]
    pub refuse_binds: bool,
    #[arg(long, default_value = "0x0D", value_parser = parse_u32_auto)]
    pub refuse_bind_status: u32,
    /// Answer this many submits (over all sessions), then close every session (0 = off).
    #[arg(long)]
    pub disconnect_after_submits: Option<u64>,
    /// Capacity of the ring buffer of received messages shown by `GET /messages` (0 = off).
    #[arg(long, default_value_t = 1000)]
    pub messages_capacity: usize,
    /// Largest accepted PDU (command_length); larger ones close the session.
    #[arg(long, default_value_t = 65536)]
    pub max_pdu_len: usize,
    /// Open SMPP connections over all threads; more are closed at accept.
    #[arg(long, default_value_t = 1024)]
    pub max_sessions: usize,
    /// Seed for the random choices (jitter, state mix); 0 = from the clock.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for SimArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: SimArgs,
        }
        Wrapper::parse_from(["smsc-sim"]).args
    }
}

impl SimArgs {
    /// Defaults, listening on an OS-chosen loopback port with the control API on another.
    pub fn for_tests() -> Self {
        SimArgs {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            control_port: Some(0),
            ..Default::default()
        }
    }

    pub(crate) fn initial_behaviour(&self) -> Result<Behaviour, SimError> {
        let b = Behaviour {
            latency_ms: check_delay("latency-ms", self.latency_ms)?,
            latency_jitter_ms: check_delay("latency-jitter-ms", self.latency_jitter_ms)?,
            throttle_percent: check_percent("throttle-percent", self.throttle_percent)?,
            throttle_status: self.throttle_status,
            refuse_binds: self.refuse_binds,
            refuse_bind_status: self.refuse_bind_status,
            paused: false,
            id_format: self.id_format,
            dlr_id_format: self.dlr_id_format.unwrap_or(self.id_format),
            id_width: check_width(self.id_width)?,
            dlr_percent: check_percent("dlr-percent", self.dlr_percent)?,
            dlr_delay_ms: check_delay("dlr-delay-ms", self.dlr_delay_ms)?,
            dlr_jitter_ms: check_delay("dlr-jitter-ms", self.dlr_jitter_ms)?,
            dlr_states: parse_states(&self.dlr_states)?,
            dlr_format: self.dlr_format,
            dlr_route: self.dlr_route,
        };
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::pdu::status::{ESME_RBINDFAIL, ESME_RTHROTTLED};

    #[test]
    fn defaults_parse() {
        let a = SimArgs::default();
        assert_eq!(a.throttle_status, ESME_RTHROTTLED);
        assert_eq!(a.refuse_bind_status, ESME_RBINDFAIL);
        let b = a.initial_behaviour().unwrap();
        assert_eq!(b.dlr_states, vec![(DlrState::Delivered, 100)]);
    }

    #[test]
    fn state_mix_parses_and_picks_by_weight() {
        let s = parse_states("delivrd=3, UNDELIV=1").unwrap();
        let b = Behaviour {
            dlr_states: s,
            ..SimArgs::default().initial_behaviour().unwrap()
        };
        assert_eq!(b.total_state_weight(), 4);
        assert_eq!(b.pick_state(0), DlrState::Delivered);
        assert_eq!(b.pick_state(2), DlrState::Delivered);
        assert_eq!(b.pick_state(3), DlrState::Undeliverable);
        assert!(parse_states("NOPE=1").is_err());
        assert!(parse_states("DELIVRD=0").is_err());
    }

    #[test]
    fn patch_is_validated_before_applied() {
        let b = SimArgs::default().initial_behaviour().unwrap();
        let bad = FaultsPatch {
            throttle_percent: Some(101.0),
            ..Default::default()
        };
        assert!(b.apply(&bad).is_err());
        let p: FaultsPatch =
            serde_json::from_str(r#"{"throttle_percent": 25, "dlr_states": {"EXPIRED": 1}}"#)
                .unwrap();
        let nb = b.apply(&p).unwrap();
        assert_eq!(nb.throttle_percent, 25.0);
        assert_eq!(nb.dlr_states, vec![(DlrState::Expired, 1)]);
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"nope": 1}"#).is_err());
    }
}
