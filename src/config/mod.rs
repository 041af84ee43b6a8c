//! Configuration: two TOML files, read in two layers.
//!
//! * `file` — serde structs that mirror the files key for key (`deny_unknown_fields`, units in
//!   key names).
//! * `types` — the validated runtime config the gateway reads (`Duration`, `NonZero*`,
//!   `SocketAddr`, enums). Nothing downstream re-validates.
//!
//! `load` reports *every* problem it finds (file, key path such as `links.100.window`, line,
//! reason), not just the first, so one `smsgw check-config` run shows everything to fix.
//! Every key is documented in `docs/configuration.md`.

mod file;
mod load;
mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use load::{Source, from_sources};
pub use types::*;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `links.100.window`; empty for whole-file problems.
    pub key: String,
    /// 1-based line of the key (or of its table when the key is missing), when known.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found, in file order (smsgw.toml first, then smpp_rules.toml).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// The errors whose key path is exactly `key` (handy in tests and tooling).
    pub fn for_key(&self, key: &str) -> impl Iterator<Item = &ConfigError> {
        self.0.iter().filter(move |e| e.key == key)
    }
}

/// Reads, parses and validates both files. Credentials may come from the environment
/// (`SMSGW_LINK_<id>_PASSWORD`, `password_env`) and from files (`password_file`).
pub fn load(smsgw_path: &Path, rules_path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(smsgw_path, rules_path, &|name| std::env::var(name).ok())
}

/// `load` with an explicit environment, so tests need not mutate the process environment.
pub fn load_with_env(
    smsgw_path: &Path,
    rules_path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                line: None,
                reason: format!("cannot read: {e}"),
            });
            None
        }
    };
    let smsgw_text = read(smsgw_path);
    let rules_text = read(rules_path);
    let (Some(smsgw_text), Some(rules_text)) = (smsgw_text, rules_text) else {
        return Err(ConfigErrors(errors));
    };
    from_sources(
        Source {
            path: smsgw_path,
            text: &smsgw_text,
        },
        Source {
            path: rules_path,
            text: &rules_text,
        },
        env,
    )
}

/// What `smsgw check-config` prints, and whether the configuration is usable.
/// The text ends with a newline. Passwords are never part of it.
pub fn check_config_report(smsgw_path: &Path, rules_path: &Path) -> (String, bool) {
    let (mut out, ok) = render_report(load(smsgw_path, rules_path));
    // The apps file (authentication) is validated too; the JWT server key is not, on purpose
    // (check-config runs where the production secret may not be).
    if let Ok(config) = load(smsgw_path, rules_path)
        && config.security.enabled
        && let Err(problems) = crate::auth::Apps::load(&config.security.apps_file)
    {
        use std::fmt::Write;
        // Replaces the "ok" line: the configuration as a whole is not usable.
        out.clear();
        for w in &config.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        for p in &problems {
            let _ = writeln!(out, "error: {}: {p}", config.security.apps_file.display());
        }
        let n = problems.len();
        let _ = writeln!(out, "{n} problem{} found", if n == 1 { "" } else { "s" });
        return (out, false);
    }
    (out, ok)
}

fn render_report(result: Result<Config, ConfigErrors>) -> (String, bool) {
    use std::fmt::Write;
    let mut out = String::new();
    match result {
        Ok(config) => {
            for w in &config.warnings {
                let _ = writeln!(out, "warning: {w}");
            }
            let enabled = config.rules.links.values().filter(|l| l.enabled).count();
            let _ = writeln!(
                out,
                "ok: {} link(s) ({} enabled), {} pool(s); http {}, grpc {}, {} shard(s), state {} at {}",
                config.rules.links.len(),
                enabled,
                config.rules.pools.len(),
                config.server.http_addr,
                config.server.grpc_addr,
                match config.server.shards {
                    ShardCount::PerCore =>
                        format!("{} (one per core)", config.server.shards.resolve()),
                    ShardCount::Fixed(n) => n.to_string(),
                },
                config.state.backend.as_str(),
                match config.state.backend {
                    StateBackend::Embedded => format!(
                        "{} (engine {})",
                        config.state.path.display(),
                        config.state.engine.as_str()
                    ),
                    StateBackend::Aerospike => format!(
                        "{} namespace {}",
                        config.state.aerospike.hosts, config.state.aerospike.namespace
                    ),
                    StateBackend::Memory => format!(
                        "process memory (NOT durable: lost on restart), max {} records",
                        config.state.memory_max_records
                    ),
                },
            );
            (out, true)
        }
        Err(errors) => {
            for e in &errors.0 {
                let _ = writeln!(out, "error: {e}");
            }
            let n = errors.0.len();
            let _ = writeln!(out, "{n} problem{} found", if n == 1 { "" } else { "s" });
            (out, false)
        }
    }
}

#[cfg(test)]
mod tests;
