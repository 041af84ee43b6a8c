//! Parsing: TOML text → file structs, collecting every problem with its key path and line.
//!
//! Serde stops at the first error of a struct. To report all of them, each section (and each
//! link/pool) is deserialized on its own, and when one key fails, that key is removed and the
//! section retried — so a typo in `links.100` does not hide a bad range in `links.200`, nor a
//! second typo in `links.100`. Each retry removes a key, so the loop is bounded by the number
//! of keys.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use super::file::{LinkFile, PoolFile, RULES_SECTIONS, SMSGW_SECTIONS};
use super::validate;
use super::{Config, ConfigError, ConfigErrors};

/// One configuration file's name (for messages and relative `password_file` paths) and text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

/// Parses and validates both files from memory. `env` looks up environment variables.
pub fn from_sources(
    smsgw: Source<'_>,
    rules: Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let smsgw_file = FileCtx::parse(smsgw, &mut errors);
    let rules_file = FileCtx::parse(rules, &mut errors);

    let gateway = smsgw_file.as_ref().map(|f| f.gateway_sections(&mut errors));
    let parsed_rules = rules_file.as_ref().map(|f| f.rules_sections(&mut errors));

    let (Some(smsgw_file), Some(rules_file), Some(gateway), Some(parsed_rules)) =
        (smsgw_file, rules_file, gateway, parsed_rules)
    else {
        return Err(ConfigErrors(sorted(errors, smsgw.path)));
    };
    let outcome = validate::validate(
        &smsgw_file,
        &rules_file,
        gateway,
        parsed_rules,
        env,
        &mut errors,
    );
    match outcome {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(sorted(errors, smsgw.path))),
    }
}

/// File order: smsgw.toml before smpp_rules.toml, then by line (stable, so problems on one
/// line keep the order they were found in), which is how an operator reads the files.
fn sorted(mut errors: Vec<ConfigError>, smsgw_path: &Path) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.file != smsgw_path, e.line.unwrap_or(0)));
    errors
}

/// The `smsgw.toml` sections that deserialized; `None` where a section had errors.
pub(super) struct GatewaySections {
    pub server: Option<super::file::ServerFile>,
    pub state: Option<super::file::StateFile>,
    pub log: Option<super::file::LogFile>,
    pub health: Option<super::file::HealthFile>,
    pub routing: Option<super::file::RoutingFile>,
    pub limits: Option<super::file::LimitsFile>,
    pub redis: Option<super::file::RedisFile>,
    pub security: Option<crate::auth::SecurityFile>,
    pub policy: Option<crate::policy::PolicyFile>,
    pub cdr: Option<crate::cdr::CdrConfig>,
    pub callbacks: Option<crate::callback::CallbackConfig>,
}

/// The `smpp_rules.toml` entries by id; ids whose entry failed to deserialize are in `broken_*`
/// so cross references to them are not reported a second time as "unknown".
pub(super) struct RulesSections {
    pub links: BTreeMap<u32, LinkFile>,
    pub pools: BTreeMap<u32, PoolFile>,
    pub broken_links: HashSet<u32>,
    pub broken_pools: HashSet<u32>,
}

/// A parsed file: its path, text and span tree (for line numbers).
pub(super) struct FileCtx<'a> {
    pub path: &'a Path,
    text: &'a str,
    spans: DeTable<'a>,
    table: toml::Table,
}

impl<'a> FileCtx<'a> {
    fn parse(src: Source<'a>, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let (spans, syntax) = DeTable::parse_recoverable(src.text);
        if !syntax.is_empty() {
            for e in syntax {
                errors.push(ConfigError {
                    file: src.path.to_path_buf(),
                    key: String::new(),
                    line: e.span().map(|s| line_at(src.text, s.start)),
                    reason: format!("TOML syntax: {}", e.message().trim_end()),
                });
            }
            return None;
        }
        match src.text.parse::<toml::Table>() {
            Ok(table) => Some(FileCtx {
                path: src.path,
                text: src.text,
                spans: spans.into_inner(),
                table,
            }),
            Err(e) => {
                errors.push(ConfigError {
                    file: src.path.to_path_buf(),
                    key: String::new(),
                    line: e.span().map(|s| line_at(src.text, s.start)),
                    reason: format!("TOML: {}", e.message().trim_end()),
                });
                None
            }
        }
    }

    /// An error at `key`, with the line of that key (or of the nearest enclosing table).
    pub fn error(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        self.error_at(key.into(), reason.into(), false)
    }

    fn error_at(&self, key: String, reason: String, missing: bool) -> ConfigError {
        let (key, line) = self.locate(key, missing, &reason);
        ConfigError {
            file: self.path.to_path_buf(),
            key,
            line,
            reason,
        }
    }

    /// The line of `key`, and the key with array indexes filled in where serde left them out:
    /// errors inside an array of tables come as `members.weight`; when exactly one element has
    /// (or, for a missing key, lacks) that key, it becomes `members.2.weight`.
    /// Among several candidates, a type error (`invalid type: string "x", ...`) picks the
    /// element whose value has the reported type.
    fn locate(&self, key: String, missing: bool, reason: &str) -> (String, Option<usize>) {
        let wrong_kind = reason
            .strip_prefix("invalid type: ")
            .map(|r| r.split([' ', ',']).next().unwrap_or(""));
        if key.is_empty() {
            return (key, None);
        }
        let parts: Vec<&str> = key.split('.').collect();
        let mut resolved: Vec<String> = Vec::with_capacity(parts.len() + 1);
        let mut table = &self.spans;
        let mut line = None;
        let mut i = 0;
        while i < parts.len() {
            let part = parts[i];
            resolved.push(part.to_string());
            let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part) else {
                // A missing key: keep the enclosing table's line.
                resolved.extend(parts[i + 1..].iter().map(|p| p.to_string()));
                break;
            };
            line = Some(line_at(self.text, k.span().start));
            let Some(next) = parts.get(i + 1) else { break };
            match v.get_ref() {
                DeValue::Table(inner) => table = inner,
                DeValue::Array(items) => {
                    let index = match next.parse::<usize>() {
                        Ok(index) => {
                            i += 1;
                            Some(index)
                        }
                        Err(_) => {
                            let value_of = |item: &toml::Spanned<DeValue<'_>>| match item.get_ref()
                            {
                                DeValue::Table(t) => t
                                    .iter()
                                    .find(|(k, _)| k.get_ref().as_ref() == *next)
                                    .map(|(_, v)| kind(v.get_ref())),
                                _ => None,
                            };
                            let candidates: Vec<usize> = (0..items.len())
                                .filter(|&n| value_of(&items[n]).is_some() != missing)
                                .collect();
                            let narrowed: Vec<usize> = match wrong_kind {
                                Some(w) if candidates.len() > 1 => candidates
                                    .iter()
                                    .copied()
                                    .filter(|&n| value_of(&items[n]) == Some(w))
                                    .collect(),
                                _ => candidates,
                            };
                            match narrowed.as_slice() {
                                [only] => Some(*only),
                                _ => None,
                            }
                        }
                    };
                    let Some(item) = index.and_then(|n| items.get(n)) else {
                        resolved.extend(parts[i + 1..].iter().map(|p| p.to_string()));
                        break;
                    };
                    resolved.push(index.unwrap_or_default().to_string());
                    line = Some(line_at(self.text, item.span().start));
                    match item.get_ref() {
                        DeValue::Table(inner) => table = inner,
                        _ => {
                            resolved.extend(parts[i + 1..].iter().map(|p| p.to_string()));
                            break;
                        }
                    }
                }
                _ => {
                    resolved.extend(parts[i + 1..].iter().map(|p| p.to_string()));
                    break;
                }
            }
            i += 1;
        }
        (resolved.join("."), line)
    }

    fn gateway_sections(&self, errors: &mut Vec<ConfigError>) -> GatewaySections {
        let mut root = self.table.clone();
        let sections = GatewaySections {
            server: self.section(&mut root, "server", errors),
            state: self.section(&mut root, "state", errors),
            log: self.section(&mut root, "log", errors),
            health: self.section(&mut root, "health", errors),
            routing: self.section(&mut root, "routing", errors),
            limits: self.section(&mut root, "limits", errors),
            redis: self.section(&mut root, "redis", errors),
            security: self.section(&mut root, "security", errors),
            policy: self.section(&mut root, "policy", errors),
            cdr: self.section(&mut root, "cdr", errors),
            callbacks: self.section(&mut root, "callbacks", errors),
        };
        for key in root.keys() {
            errors.push(self.error(
                key.clone(),
                unknown_key_reason("section", key, SMSGW_SECTIONS),
            ));
        }
        sections
    }

    fn rules_sections(&self, errors: &mut Vec<ConfigError>) -> RulesSections {
        let mut out = RulesSections {
            links: BTreeMap::new(),
            pools: BTreeMap::new(),
            broken_links: HashSet::new(),
            broken_pools: HashSet::new(),
        };
        for (key, value) in &self.table {
            match key.as_str() {
                "links" => self.numbered(
                    value,
                    "links",
                    errors,
                    &mut out.links,
                    &mut out.broken_links,
                ),
                "pools" => self.numbered(
                    value,
                    "pools",
                    errors,
                    &mut out.pools,
                    &mut out.broken_pools,
                ),
                other => errors
                    .push(self.error(other, unknown_key_reason("section", other, RULES_SECTIONS))),
            }
        }
        out
    }

    /// `[links.<id>]` / `[pools.<id>]`: a table of tables keyed by positive integers.
    fn numbered<T: DeserializeOwned>(
        &self,
        value: &toml::Value,
        name: &str,
        errors: &mut Vec<ConfigError>,
        good: &mut BTreeMap<u32, T>,
        broken: &mut HashSet<u32>,
    ) {
        let toml::Value::Table(entries) = value else {
            errors.push(self.error(name, format!("must be a table of `[{name}.<id>]` entries")));
            return;
        };
        for (id_text, entry) in entries {
            let key = format!("{name}.{id_text}");
            let id = match id_text.parse::<u32>() {
                // `[links.0100]` and `[links.100]` are two TOML keys but one id: refuse rather
                // than let one silently replace the other.
                Ok(id) if id > 0 && (good.contains_key(&id) || broken.contains(&id)) => {
                    errors.push(self.error(
                        key,
                        format!("id {id} is defined twice (as `{id_text}` and another spelling)"),
                    ));
                    broken.insert(id);
                    continue;
                }
                Ok(id) if id > 0 => id,
                _ => {
                    errors.push(self.error(
                        key,
                        format!("`{id_text}` is not a valid id: ids are integers 1..=4294967295"),
                    ));
                    continue;
                }
            };
            let toml::Value::Table(fields) = entry else {
                errors.push(self.error(key, format!("must be a table `[{name}.{id}]`")));
                broken.insert(id);
                continue;
            };
            match self.deserialize_table::<T>(&key, fields.clone(), errors) {
                Some((v, clean)) => {
                    // Keep validating an entry whose bad keys were dropped, so its remaining
                    // problems show up in the same run; `broken` still fails the load.
                    if !clean {
                        broken.insert(id);
                    }
                    good.insert(id, v);
                }
                None => {
                    broken.insert(id);
                }
            }
        }
    }

    /// A top-level `[name]` section; absent → all defaults.
    fn section<T: DeserializeOwned + Default>(
        &self,
        root: &mut toml::Table,
        name: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T> {
        match root.remove(name) {
            None => Some(T::default()),
            // A section with dropped keys is still validated; the recorded errors fail the load.
            Some(toml::Value::Table(t)) => self.deserialize_table(name, t, errors).map(|(v, _)| v),
            Some(other) => {
                errors.push(self.error(
                    name,
                    format!("must be a table `[{name}]`, found {}", other.type_str()),
                ));
                None
            }
        }
    }

    /// Deserializes one table, reporting every bad key (see the module comment). Returns the
    /// value built from the keys that were fine and whether there were none that were not;
    /// `None` when a required key is missing or bad.
    fn deserialize_table<T: DeserializeOwned>(
        &self,
        prefix: &str,
        mut table: toml::Table,
        errors: &mut Vec<ConfigError>,
    ) -> Option<(T, bool)> {
        let mut reported = false;
        let mut removed: HashSet<String> = HashSet::new();
        for _ in 0..=table.len() {
            let err = match T::deserialize(toml::Value::Table(table.clone())) {
                Ok(v) => return Some((v, !reported)),
                Err(e) => e,
            };
            let problem = Problem::from_toml(&err);
            let first = problem.key.split('.').next().unwrap_or("").to_string();
            if problem.missing && removed.contains(&first) {
                // We removed this key ourselves after reporting it; nothing new to say.
                return None;
            }
            errors.push(self.error_at(join(prefix, &problem.key), problem.reason, problem.missing));
            reported = true;
            if problem.missing || table.remove(&first).is_none() {
                return None;
            }
            removed.insert(first);
        }
        None
    }
}

/// A serde error turned into (key within the table, reason).
struct Problem {
    key: String,
    reason: String,
    missing: bool,
}

impl Problem {
    fn from_toml(e: &toml::de::Error) -> Self {
        let message = e.message().trim_end();
        // The message has no key; the Display form ends with "in `a.b`" when the error was
        // raised below the top of the value we deserialized.
        let display = e.to_string();
        let in_path = display
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')))
            .unwrap_or("")
            .to_string();
        let with_name = |name: &str| {
            if in_path == name || in_path.ends_with(&format!(".{name}")) {
                in_path.clone()
            } else {
                join(&in_path, name)
            }
        };
        if let Some(name) = backticked_after(message, "unknown field `") {
            let expected = backticked_list(message.split_once("expected").map_or("", |(_, r)| r));
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            return Problem {
                key: with_name(&name),
                reason: unknown_key_reason("key", &name, &expected),
                missing: false,
            };
        }
        if let Some(name) = backticked_after(message, "missing field `") {
            return Problem {
                key: with_name(&name),
                reason: "required key is missing".into(),
                missing: true,
            };
        }
        Problem {
            key: in_path,
            reason: humanize(message),
            missing: false,
        }
    }
}

/// "unknown key `windw`; did you mean `window`?" (or the list of known keys).
pub(super) fn unknown_key_reason(what: &str, name: &str, expected: &[&str]) -> String {
    let suggestion = expected
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        // Close enough to be a typo (one edit per three characters, at least one), and not so
        // short that every key would be "close".
        .filter(|(d, k)| *d <= 1.max(k.len() / 3) && *d < name.len())
        .min();
    match suggestion {
        Some((_, k)) => format!("unknown {what} `{name}`; did you mean `{k}`?"),
        None if expected.is_empty() => format!("unknown {what} `{name}`"),
        None => format!("unknown {what} `{name}`; known: {}", expected.join(", ")),
    }
}

fn humanize(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("expected u64", "expected an integer")
        .replace("a boolean", "true or false")
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

fn backticked_list(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

pub(super) fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => key.to_string(),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// serde's word for a TOML value's type, as used in "invalid type: <kind> ...".
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "floating",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "datetime",
        DeValue::Array(_) => "sequence",
        DeValue::Table(_) => "map",
    }
}

fn line_at(text: &str, byte: usize) -> usize {
    let end = byte.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Levenshtein distance; names are short, so the O(n·m) table is nothing.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
