//! `[security]` in `smsgw.toml`: file layer and validation (called by `crate::config`).
//!
//! The JWT server key is deliberately *not* read here: `smsgw check-config` must validate a
//! configuration on a machine that does not hold the production secret. It is read when the
//! gateway (or `smsgw token`) starts, see `crate::auth::load_server_key`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment variable holding the HS256 server key; wins over `jwt_secret_file`.
pub const JWT_SECRET_ENV: &str = "SMSGW_JWT_SECRET";
/// Environment variable holding the admin API key; unset = admin API disabled (503).
pub const ADMIN_KEY_ENV: &str = "ADMIN_API_KEY";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityFile {
    pub enabled: bool,
    pub apps_file: String,
    pub jwt_secret_file: String,
    pub issuer: String,
    pub token_ttl_s: i64,
    pub leeway_s: i64,
    pub apps_poll_interval_ms: i64,
    pub token_cache_entries: i64,
    pub login_failures_per_min: i64,
}

impl Default for SecurityFile {
    fn default() -> Self {
        SecurityFile {
            enabled: true,
            apps_file: "apps.toml".into(),
            jwt_secret_file: String::new(),
            issuer: "smsgw".into(),
            token_ttl_s: 12 * 3600,
            leeway_s: 30,
            apps_poll_interval_ms: 2000,
            token_cache_entries: 4096,
            login_failures_per_min: 10,
        }
    }
}

/// Validated `[security]`.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// `false`: every request is let through as app 0 (a lab setting; logged loudly at start).
    pub enabled: bool,
    /// Absolute, or relative to the directory of `smsgw.toml`.
    pub apps_file: PathBuf,
    /// Where the HS256 server key is read from when `SMSGW_JWT_SECRET` is unset.
    pub jwt_key_file: Option<PathBuf>,
    /// `iss` of tokens this gateway mints, and required on HS256 tokens it verifies.
    pub issuer: String,
    pub token_ttl: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the apps file's mtime is checked; `None` = only on `POST /api/v1/admin/reload`.
    pub apps_poll_interval: Option<Duration>,
    /// Verified tokens remembered per shard (0 = verify every request).
    pub token_cache_entries: usize,
    /// Failed logins allowed per client IP per minute before 429.
    pub login_failures_per_min: u32,
}

impl SecurityConfig {
    /// Defaults with the apps file next to `config_file` (for tools and tests).
    pub fn defaults_for(config_file: &Path) -> SecurityConfig {
        let mut errs = Vec::new();
        validate(SecurityFile::default(), config_file, &mut |k, r| {
            errs.push(format!("{k}: {r}"))
        })
        .expect("the defaults are valid")
    }
}

/// Validates `[security]`; every problem goes to `err(key, reason)`.
pub fn validate(
    f: SecurityFile,
    config_file: &Path,
    err: &mut dyn FnMut(&str, String),
) -> Option<SecurityConfig> {
    let mut ok = true;
    let mut range = |key: &str, v: i64, lo: i64, hi: i64| -> Option<u64> {
        if (lo..=hi).contains(&v) {
            Some(v as u64)
        } else {
            ok = false;
            err(key, format!("must be between {lo} and {hi}, got {v}"));
            None
        }
    };
    let ttl = range("security.token_ttl_s", f.token_ttl_s, 60, 30 * 86400);
    let leeway = range("security.leeway_s", f.leeway_s, 0, 300);
    let poll = if f.apps_poll_interval_ms == 0 {
        Some(0)
    } else {
        range(
            "security.apps_poll_interval_ms",
            f.apps_poll_interval_ms,
            100,
            3_600_000,
        )
    };
    let cache = range(
        "security.token_cache_entries",
        f.token_cache_entries,
        0,
        1_000_000,
    );
    let failures = range(
        "security.login_failures_per_min",
        f.login_failures_per_min,
        1,
        1_000_000,
    );
    if f.apps_file.trim().is_empty() {
        err("security.apps_file", "must name a file".into());
        ok = false;
    }
    if f.issuer.is_empty() || f.issuer.len() > 256 {
        err("security.issuer", "must be 1..=256 bytes".into());
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(SecurityConfig {
        enabled: f.enabled,
        apps_file: resolve_relative(config_file, Path::new(&f.apps_file)),
        jwt_key_file: (!f.jwt_secret_file.is_empty())
            .then(|| resolve_relative(config_file, Path::new(&f.jwt_secret_file))),
        issuer: f.issuer,
        token_ttl: Duration::from_secs(ttl?),
        leeway: Duration::from_secs(leeway?),
        apps_poll_interval: poll.filter(|&ms| ms > 0).map(Duration::from_millis),
        token_cache_entries: cache? as usize,
        login_failures_per_min: failures? as u32,
    })
}

pub(crate) fn resolve_relative(config_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) => dir.join(path),
        None => path.to_path_buf(),
    }
}
