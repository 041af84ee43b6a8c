//! `[policy]` in smsgw.toml (keys documented in docs/configuration.md#policy).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::loader::{S3Source, Source};
use super::number::valid_country_code;
use super::{PolicySettings, Strategies};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    pub enabled: bool,
    pub default_strategy: String,
    pub daily_cap: i64,
    pub weekly_cap: i64,
    /// `"+03:00"`, `"-05:30"`, `"Z"` / `"UTC"`.
    pub utc_offset: String,
    pub cp2_window_s: i64,
    pub default_country_code: String,
    pub memory_max_entries: i64,
    /// `"fail_open"` or `"fail_closed"`.
    pub on_redis_down: String,
    /// Local directory of CSV files ("" = none; relative to the config file).
    pub blacklist_dir: String,
    pub refresh_interval_s: i64,
    pub s3_bucket: String,
    pub s3_prefix: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_path_style: bool,
    pub s3_timeout_ms: i64,
    /// Environment variable names holding the S3 keys (never the keys themselves).
    pub s3_access_key_env: String,
    pub s3_secret_key_env: String,
    /// `http://host:port` of a remote `smsgw mcp`; "" = decide in process.
    pub remote_url: String,
    pub remote_timeout_ms: i64,
    /// `"fail_open"` or `"fail_closed"`.
    pub remote_on_error: String,
    pub remote_max_in_flight: i64,
}

impl Default for PolicyFile {
    fn default() -> Self {
        PolicyFile {
            enabled: true,
            default_strategy: String::new(),
            daily_cap: 0,
            weekly_cap: 0,
            utc_offset: "+00:00".into(),
            cp2_window_s: 600,
            default_country_code: String::new(),
            memory_max_entries: 1_000_000,
            on_redis_down: "fail_open".into(),
            blacklist_dir: String::new(),
            refresh_interval_s: 60,
            s3_bucket: String::new(),
            s3_prefix: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_path_style: true,
            s3_timeout_ms: 5000,
            s3_access_key_env: "AWS_ACCESS_KEY_ID".into(),
            s3_secret_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            remote_url: String::new(),
            remote_timeout_ms: 500,
            remote_on_error: "fail_open".into(),
            remote_max_in_flight: 256,
        }
    }
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub enabled: bool,
    pub settings: PolicySettings,
    pub sources: Vec<Source>,
    pub refresh_interval: Duration,
    /// `remote_url` set: the gateway asks this `smsgw mcp` instead of its own engine.
    pub remote: Option<super::remote::RemoteConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enabled: true,
            settings: PolicySettings::default(),
            sources: Vec::new(),
            refresh_interval: Duration::from_secs(60),
            remote: None,
        }
    }
}

/// `"+03:00"` → 10800.
pub fn parse_utc_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") || s.is_empty() {
        return Some(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// Checks every key; `env` resolves the S3 key variables.
pub fn validate(
    f: PolicyFile,
    config_file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    err: &mut dyn FnMut(&str, String),
) -> Option<PolicyConfig> {
    let mut ok = true;
    let mut range = |key: &str, v: i64, lo: i64, hi: i64| -> i64 {
        if (lo..=hi).contains(&v) {
            v
        } else {
            ok = false;
            err(key, format!("must be between {lo} and {hi}, got {v}"));
            lo
        }
    };
    let daily_cap = range("policy.daily_cap", f.daily_cap, 0, 1_000_000) as u32;
    let weekly_cap = range("policy.weekly_cap", f.weekly_cap, 0, 10_000_000) as u32;
    let window = range("policy.cp2_window_s", f.cp2_window_s, 1, 30 * 86400) as u64;
    let max_entries = range(
        "policy.memory_max_entries",
        f.memory_max_entries,
        1000,
        100_000_000,
    ) as usize;
    let refresh = range("policy.refresh_interval_s", f.refresh_interval_s, 1, 86400) as u64;
    let s3_timeout = range("policy.s3_timeout_ms", f.s3_timeout_ms, 100, 120_000) as u64;
    let remote_timeout = range("policy.remote_timeout_ms", f.remote_timeout_ms, 10, 60_000) as u64;
    let remote_in_flight = range(
        "policy.remote_max_in_flight",
        f.remote_max_in_flight,
        1,
        65_536,
    ) as usize;
    let mut problems: Vec<(&str, String)> = Vec::new();
    let default_strategy = Strategies::parse(&f.default_strategy)
        .map_err(|e| problems.push(("policy.default_strategy", e)))
        .unwrap_or_default();
    let utc_offset_s = parse_utc_offset(&f.utc_offset).unwrap_or_else(|| {
        problems.push((
            "policy.utc_offset",
            format!(
                "{:?} is not an offset like \"+03:00\" or \"UTC\"",
                f.utc_offset
            ),
        ));
        0
    });
    if !valid_country_code(&f.default_country_code) {
        problems.push((
            "policy.default_country_code",
            "must be 1 to 3 digits not starting with 0 (or empty)".into(),
        ));
    }
    let fail_open = match f.on_redis_down.as_str() {
        "fail_open" => true,
        "fail_closed" => false,
        other => {
            problems.push((
                "policy.on_redis_down",
                format!("{other:?}: expected \"fail_open\" or \"fail_closed\""),
            ));
            true
        }
    };
    let remote_fail_open = match f.remote_on_error.as_str() {
        "fail_open" => true,
        "fail_closed" => false,
        other => {
            problems.push((
                "policy.remote_on_error",
                format!("{other:?}: expected \"fail_open\" or \"fail_closed\""),
            ));
            true
        }
    };
    let remote = if f.remote_url.is_empty() {
        None
    } else {
        match super::remote::parse_url(&f.remote_url) {
            Ok((authority, base_path)) => Some(super::remote::RemoteConfig {
                authority,
                base_path,
                timeout: Duration::from_millis(remote_timeout),
                fail_open: remote_fail_open,
                max_in_flight: remote_in_flight,
            }),
            Err(e) => {
                problems.push(("policy.remote_url", e));
                None
            }
        }
    };
    let mut sources = Vec::new();
    if !f.blacklist_dir.is_empty() {
        let p = PathBuf::from(&f.blacklist_dir);
        let p = if p.is_relative() {
            config_file.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p
        };
        sources.push(Source::Dir(p));
    }
    if !f.s3_bucket.is_empty() {
        sources.push(Source::S3(S3Source {
            bucket: f.s3_bucket,
            prefix: f.s3_prefix,
            endpoint: f.s3_endpoint,
            region: f.s3_region,
            access_key: env(&f.s3_access_key_env).unwrap_or_default(),
            secret_key: env(&f.s3_secret_key_env).unwrap_or_default(),
            path_style: f.s3_path_style,
            timeout: Duration::from_millis(s3_timeout),
        }));
    }
    for (k, r) in problems {
        ok = false;
        err(k, r);
    }
    ok.then(|| PolicyConfig {
        enabled: f.enabled,
        settings: PolicySettings {
            default_strategy,
            daily_cap,
            weekly_cap,
            utc_offset_s,
            cp2_window: Duration::from_secs(window),
            default_country_code: f.default_country_code,
            memory_max_entries: max_entries,
            fail_open,
        },
        sources,
        refresh_interval: Duration::from_secs(refresh),
        remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_utc_offset("+03:00"), Some(10800));
        assert_eq!(parse_utc_offset("-05:30"), Some(-19800));
        assert_eq!(parse_utc_offset("UTC"), Some(0));
        assert_eq!(parse_utc_offset("Europe/Berlin"), None);
        assert_eq!(parse_utc_offset("+25:00"), None);
    }
}
