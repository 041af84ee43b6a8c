//! Contact policy (the "MCP"): per-destination caps (CP1), duplicate suppression (CP2) and
//! blacklists, asked per message by strategy name. See docs/limits-and-policy.md.
//!
//! * `number` — E.164 normalisation to a `u64` key.
//! * `blacklist` — the compact immutable number set and the CSV parser.
//! * `loader` — local directory / S3 sources, ETag-aware refresh, atomic publish.
//! * `engine` — the decision, memory counters, clock.
//! * `redis_store` — the counters in Redis (one atomic Lua script).
//! * `config` — the `[policy]` section.
//! * `mcp` — `smsgw mcp` (the engine as an HTTP service) and the gateway's policy stage.
//! * `remote` — the gateway's policy stage asking a remote `smsgw mcp` (`remote_url`).

pub mod blacklist;
pub mod config;
pub mod engine;
pub mod loader;
pub mod mcp;
pub mod number;
pub mod redis_store;
pub mod remote;

use std::time::Duration;

use sha2::Digest;

pub use config::{PolicyConfig, PolicyFile};
pub use engine::{CheckRequest, Clock, ManualClock, PolicyEngine, SystemClock};

/// The answer's `state` (reference API names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok = 0,
    DailyCap = 1,
    WeeklyCap = 2,
    Blacklist = 3,
    Duplicate = 4,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Ok,
        State::DailyCap,
        State::WeeklyCap,
        State::Blacklist,
        State::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::DailyCap => "daily_cp",
            State::WeeklyCap => "weekly_cp",
            State::Blacklist => "blacklist",
            State::Duplicate => "duplicate",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn pass(self) -> bool {
        self == State::Ok
    }
}

/// Which strategies apply to one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strategies {
    pub cp1: bool,
    pub cp2: bool,
    pub blacklist: bool,
}

impl Strategies {
    /// `"cp1,cp2,blacklist"` (any order, spaces allowed); `""` and `"none"` = nothing.
    pub fn parse(s: &str) -> Result<Strategies, String> {
        let mut out = Strategies::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "cp1" => out.cp1 = true,
                "cp2" => out.cp2 = true,
                "blacklist" => out.blacklist = true,
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown strategy {other:?} (expected cp1, cp2, blacklist or none)"
                    ));
                }
            }
        }
        Ok(out)
    }

    pub fn any(self) -> bool {
        self.cp1 || self.cp2 || self.blacklist
    }
}

/// The settings the engine decides with (from `[policy]`).
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Strategy when neither the request nor the app names one.
    pub default_strategy: Strategies,
    /// CP1 caps per destination; 0 = no cap.
    pub daily_cap: u32,
    pub weekly_cap: u32,
    /// Calendar of the caps: fixed offset from UTC in seconds (no DST).
    pub utc_offset_s: i32,
    /// CP2 window.
    pub cp2_window: Duration,
    /// Digits put in front of national numbers; empty = refuse them.
    pub default_country_code: String,
    /// Bound of each in-memory map (CP1 destinations, CP2 markers).
    pub memory_max_entries: usize,
    /// Redis down: count in memory (true) or refuse with 503 (false).
    pub fail_open: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            default_strategy: Strategies::default(),
            daily_cap: 0,
            weekly_cap: 0,
            utc_offset_s: 0,
            cp2_window: Duration::from_secs(600),
            default_country_code: String::new(),
            memory_max_entries: 1_000_000,
            fail_open: true,
        }
    }
}

/// Stable 64-bit hash of a message text (first 8 bytes of SHA-256): the same on every
/// replica and release, so CP2 keys in Redis are shared. A collision only matters between two
/// texts of the same app to the same destination within the window.
pub fn text_hash(text: &str) -> u64 {
    let d = sha2::Sha256::digest(text.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_combine() {
        let s = Strategies::parse(" cp1 , CP2,blacklist").unwrap();
        assert!(s.cp1 && s.cp2 && s.blacklist);
        assert_eq!(Strategies::parse("").unwrap(), Strategies::default());
        assert_eq!(Strategies::parse("none").unwrap(), Strategies::default());
        assert!(Strategies::parse("cp3").is_err());
        for st in State::ALL {
            assert_eq!(State::parse(st.as_str()), Some(st));
        }
        assert_eq!(text_hash("hello"), text_hash("hello"));
        assert_ne!(text_hash("hello"), text_hash("hello!"));
    }
}
