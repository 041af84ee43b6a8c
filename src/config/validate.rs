//! Validation: file structs → runtime config. Every range and cross reference is checked here,
//! and every failure is recorded (the function goes on after a failure), so the operator sees
//! all problems in one run.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{
    HealthFile, LimitsFile, LinkFile, LogFile, PoolFile, RedisFile, RoutingFile, ServerFile,
    StateFile,
};
use super::load::{FileCtx, GatewaySections, RulesSections};
use super::types::*;
use super::{ConfigError, load::join};

/// Numbering plan indicators defined by SMPP 3.4 §5.2.6.
const VALID_NPI: &[i64] = &[0, 1, 3, 4, 6, 8, 9, 10, 14, 18];

pub(super) fn validate(
    smsgw: &FileCtx<'_>,
    rules_file: &FileCtx<'_>,
    gateway: GatewaySections,
    rules: RulesSections,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut c = Check {
        file: smsgw,
        errors,
    };
    let server = gateway.server.and_then(|f| c.server(f));
    let state = gateway.state.and_then(|f| c.state(f));
    let log = gateway.log.and_then(|f| c.log(f));
    let health = gateway.health.and_then(|f| c.health(f));
    let routing = gateway.routing.and_then(|f| c.routing(f));
    let limits = gateway.limits.and_then(|f| c.limits(f));
    let redis = gateway.redis.and_then(|f| c.redis(f));
    let security = gateway.security.and_then(|f| {
        crate::auth::config::validate(f, smsgw.path, &mut |key, reason| c.err(key, reason))
    });
    let policy = gateway.policy.and_then(|f| {
        crate::policy::config::validate(f, smsgw.path, env, &mut |key, reason| c.err(key, reason))
    });
    // [cdr]: relative dirs are relative to the working directory, like `[state] path` (they
    // hold data the process writes, not files shipped beside the config), and the defaults
    // (`var/cdr`) mean the same with or without a `[cdr]` section.
    let cdr = gateway.cdr.and_then(|f| match f.validate() {
        Ok(()) => Some(f),
        Err(e) => {
            c.err("cdr", e.to_string());
            None
        }
    });
    // [callbacks]: `path` is relative to the working directory, like `[state] path`.
    let callbacks = gateway.callbacks.and_then(|f| match f.validate() {
        Ok(()) => Some(f),
        Err(e) => {
            c.err("callbacks", e.to_string());
            None
        }
    });

    // Links fall back to the health interval; a broken [health] must not cascade into a
    // report for every link, so use the documented default in that case.
    let default_enquire = health
        .as_ref()
        .map_or(Duration::from_secs(10), |h| h.check_interval);
    let mut c = Check {
        file: rules_file,
        errors,
    };
    let mut warnings = Vec::new();
    let rules = c.rules(rules, default_enquire, env, &mut warnings);

    Some(Config {
        server: server?,
        state: state?,
        log: log?,
        health: health?,
        routing: routing?,
        limits: limits?,
        redis: redis?,
        security: security?,
        policy: policy?,
        cdr: cdr?,
        callbacks: callbacks?,
        rules: rules?,
        warnings,
    })
}

struct Check<'f, 'a, 'e> {
    file: &'f FileCtx<'a>,
    errors: &'e mut Vec<ConfigError>,
}

impl Check<'_, '_, '_> {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(self.file.error(key, reason));
    }

    /// `value` within `lo..=hi`, converted to `T`.
    fn int<T: TryFrom<i64>>(&mut self, key: &str, value: i64, lo: i64, hi: i64) -> Option<T> {
        if value < lo || value > hi {
            self.err(key, format!("must be in {lo}..={hi}, got {value}"));
            return None;
        }
        T::try_from(value).ok()
    }

    fn nz_u32(&mut self, key: &str, value: i64, hi: i64) -> Option<NonZeroU32> {
        self.int::<u32>(key, value, 1, hi).and_then(NonZeroU32::new)
    }

    fn nz_usize(&mut self, key: &str, value: i64, hi: i64) -> Option<NonZeroUsize> {
        self.int::<usize>(key, value, 1, hi)
            .and_then(NonZeroUsize::new)
    }

    fn millis(&mut self, key: &str, value: i64, lo: i64, hi: i64) -> Option<Duration> {
        self.int::<u64>(key, value, lo, hi)
            .map(Duration::from_millis)
    }

    fn secs(&mut self, key: &str, value: i64, lo: i64, hi: i64) -> Option<Duration> {
        self.int::<u64>(key, value, lo, hi).map(Duration::from_secs)
    }

    fn addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    format!("`{text}` is not an IP:port address like 127.0.0.1:8088 or [::1]:8088"),
                );
                None
            }
        }
    }

    /// An SMPP C-Octet String field: ASCII without NUL, at most `max` bytes (the wire limit
    /// minus the terminating NUL).
    fn c_octet(&mut self, key: &str, value: &str, min: usize, max: usize) -> bool {
        if value.len() < min || value.len() > max {
            self.err(
                key,
                format!(
                    "must be {min}..={max} bytes long (SMPP 3.4 limit), got {}",
                    value.len()
                ),
            );
            return false;
        }
        if !value.bytes().all(|b| b.is_ascii() && b != 0) {
            self.err(key, "must be ASCII without NUL bytes");
            return false;
        }
        true
    }

    fn server(&mut self, f: ServerFile) -> Option<ServerConfig> {
        let http_addr = self.addr("server.http_addr", &f.http_addr);
        let grpc_addr = self.addr("server.grpc_addr", &f.grpc_addr);
        if let (Some(h), Some(g)) = (http_addr, grpc_addr)
            && h == g
            && h.port() != 0
        {
            self.err(
                "server.grpc_addr",
                format!("same address as server.http_addr ({h})"),
            );
        }
        let shards = self
            .int::<usize>("server.shards", f.shards, 0, 1024)
            .map(|n| match NonZeroUsize::new(n) {
                Some(n) => ShardCount::Fixed(n),
                None => ShardCount::PerCore,
            });
        let max_body_bytes = self.nz_usize("server.max_body_bytes", f.max_body_bytes, 64 << 20);
        let max_body_bytes = max_body_bytes.filter(|n| {
            // Smaller than one JSON send request: every request would be 413.
            let ok = n.get() >= 256;
            if !ok {
                self.err(
                    "server.max_body_bytes",
                    format!("must be in 256..={}, got {n}", 64 << 20),
                );
            }
            ok
        });
        let max_connections_per_shard = self.nz_u32(
            "server.max_connections_per_shard",
            f.max_connections_per_shard,
            1_000_000,
        );
        let max_pipeline_depth =
            self.nz_u32("server.max_pipeline_depth", f.max_pipeline_depth, 1024);
        let request_timeout = self.millis(
            "server.request_timeout_ms",
            f.request_timeout_ms,
            1,
            600_000,
        );
        let shutdown_timeout = self.millis(
            "server.shutdown_timeout_ms",
            f.shutdown_timeout_ms,
            1,
            600_000,
        );
        let instance_id = if f.instance_id.is_empty() {
            Some(default_instance_id())
        } else if f.instance_id.len() <= 64
            && f.instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            Some(f.instance_id)
        } else {
            self.err(
                "server.instance_id",
                "must be 1..=64 characters from A-Z a-z 0-9 - _ .",
            );
            None
        };
        Some(ServerConfig {
            http_addr: http_addr?,
            grpc_addr: grpc_addr?,
            grpc_enabled: f.grpc_enabled,
            shards: shards?,
            max_body_bytes: max_body_bytes?,
            max_connections_per_shard: max_connections_per_shard?,
            max_pipeline_depth: max_pipeline_depth?,
            request_timeout: request_timeout?,
            shutdown_timeout: shutdown_timeout?,
            instance_id: instance_id?,
        })
    }

    fn state(&mut self, f: StateFile) -> Option<StateConfig> {
        let backend = match f.backend {
            StateBackend::Embedded | StateBackend::Aerospike | StateBackend::Memory => {
                Some(f.backend)
            }
        };
        let path = if f.path.trim().is_empty() {
            self.err("state.path", "must not be empty");
            None
        } else {
            Some(PathBuf::from(f.path))
        };
        let ttl = self.secs("state.ttl_s", f.ttl_s, 60, 30 * 86_400);
        let batch_max = self.nz_usize("state.batch_max", f.batch_max, 65_536);
        let batch_delay = self
            .int::<u64>("state.batch_delay_us", f.batch_delay_us, 0, 1_000_000)
            .map(Duration::from_micros);
        let op_timeout = self
            .int::<u64>("state.op_timeout_ms", f.op_timeout_ms, 10, 60_000)
            .map(Duration::from_millis);
        let resubmit_max_age = self
            .int::<u64>(
                "state.resubmit_max_age_s",
                f.resubmit_max_age_s,
                0,
                30 * 86_400,
            )
            .map(Duration::from_secs);
        let memory_max_records = self.int::<usize>(
            "state.memory_max_records",
            f.memory_max_records,
            1,
            100_000_000,
        );
        let hot_max_records = self.int::<usize>(
            "state.hot_max_records",
            f.hot_max_records,
            1_000,
            100_000_000,
        );
        let hot = self.secs("state.hot_s", f.hot_s, 1, 86_400);
        let checkpoint_interval = self
            .int::<u64>(
                "state.checkpoint_interval_ms",
                f.checkpoint_interval_ms,
                100,
                600_000,
            )
            .map(Duration::from_millis);
        let sync_linger = self
            .int::<u64>("state.sync_linger_us", f.sync_linger_us, 0, 100_000)
            .map(Duration::from_micros);
        let checkpoint_bytes = self
            .int::<u64>("state.checkpoint_mib", f.checkpoint_mib, 1, 4096)
            .map(|m| m << 20);
        let key_filter_bytes = self
            .int::<usize>("state.key_filter_mib", f.key_filter_mib, 0, 4096)
            .map(|m| m << 20);
        // Checked whatever the backend, so a mistake shows before someone switches to it. The
        // message TTL is `[state] ttl_s` (its documented default if that key is itself wrong).
        let aerospike = match f.aerospike.validate(ttl.map_or(86_400, |t| t.as_secs())) {
            Ok(a) => Some(a),
            Err(problems) => {
                for (key, reason) in problems {
                    self.err(format!("state.aerospike.{key}"), reason);
                }
                None
            }
        };
        Some(StateConfig {
            backend: backend?,
            path: path?,
            ttl: ttl?,
            fsync: f.fsync,
            batch_max: batch_max?,
            batch_delay: batch_delay?,
            on_unavailable: f.on_unavailable,
            op_timeout: op_timeout?,
            resubmit_max_age: resubmit_max_age?,
            aerospike: aerospike?,
            memory_max_records: memory_max_records?,
            engine: f.engine,
            hot_max_records: hot_max_records?,
            hot: hot?,
            checkpoint_interval: checkpoint_interval?,
            checkpoint_bytes: checkpoint_bytes?,
            key_filter_bytes: key_filter_bytes?,
            sync_linger: sync_linger?,
        })
    }

    fn log(&mut self, f: LogFile) -> Option<LogConfig> {
        if f.level.trim().is_empty() {
            self.err("log.level", "must not be empty (e.g. \"info\")");
            return None;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&f.level) {
            self.err("log.level", format!("not a valid filter: {e}"));
            return None;
        }
        Some(LogConfig {
            level: f.level,
            format: f.format,
        })
    }

    fn health(&mut self, f: HealthFile) -> Option<HealthConfig> {
        let check_interval = self.secs("health.check_interval_s", f.check_interval_s, 1, 3600)?;
        Some(HealthConfig { check_interval })
    }

    fn routing(&mut self, f: RoutingFile) -> Option<RoutingConfig> {
        let cross_shard_capacity = self.nz_usize(
            "routing.cross_shard_capacity",
            f.cross_shard_capacity,
            1_000_000,
        )?;
        Some(RoutingConfig {
            cross_shard_capacity,
        })
    }

    /// A rate and its burst (`0`/absent burst → equal to the rate).
    fn rate_limit(&mut self, key: &str, rate: i64, burst: i64) -> Option<RateLimit> {
        let rate_per_s = self.nz_u32(&format!("{key}rate_per_s"), rate, 10_000_000)?;
        let burst = if burst == 0 {
            rate_per_s
        } else {
            self.nz_u32(&format!("{key}burst"), burst, 100_000_000)?
        };
        Some(RateLimit { rate_per_s, burst })
    }

    fn limits(&mut self, f: LimitsFile) -> Option<LimitsConfig> {
        let mut ok = true;
        let app_default = match f.app_rate_per_s {
            0 => None,
            rate => {
                let r = self.nz_u32("limits.app_rate_per_s", rate, 10_000_000);
                let b = match f.app_burst {
                    0 => r,
                    b => self.nz_u32("limits.app_burst", b, 100_000_000),
                };
                match (r, b) {
                    (Some(rate_per_s), Some(burst)) => Some(RateLimit { rate_per_s, burst }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let mut apps = BTreeMap::new();
        for (id_text, a) in &f.apps {
            let key = format!("limits.apps.{id_text}.");
            let Ok(id) = id_text.parse::<u64>() else {
                self.err(
                    format!("limits.apps.{id_text}"),
                    format!("`{id_text}` is not an app id (a non-negative integer)"),
                );
                ok = false;
                continue;
            };
            match self.rate_limit(&key, a.rate_per_s, a.burst.unwrap_or(0)) {
                Some(r) => {
                    apps.insert(id, r);
                }
                None => ok = false,
            }
        }
        let expected_replicas = self.nz_u32("limits.expected_replicas", f.expected_replicas, 1000);
        let lease_max = self.nz_u32("limits.lease_max", f.lease_max, 1_000_000);
        let lease_ttl = self.millis("limits.lease_ttl_ms", f.lease_ttl_ms, 10, 60_000);
        if !ok {
            return None;
        }
        Some(LimitsConfig {
            app_default,
            apps,
            links: f.links,
            on_redis_down: f.on_redis_down,
            expected_replicas: expected_replicas?,
            lease_max: lease_max?,
            lease_ttl: lease_ttl?,
        })
    }

    fn redis(&mut self, f: RedisFile) -> Option<RedisConfig> {
        let url = if f.url.is_empty() {
            None
        } else if ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|p| f.url.starts_with(p))
        {
            Some(f.url.clone())
        } else {
            self.err(
                "redis.url",
                "must start with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)",
            );
            return None;
        };
        let timeout = self.millis("redis.timeout_ms", f.timeout_ms, 1, 60_000);
        let reconnect_min = self.millis("redis.reconnect_min_ms", f.reconnect_min_ms, 1, 600_000);
        let reconnect_max = self.millis("redis.reconnect_max_ms", f.reconnect_max_ms, 1, 600_000);
        if f.key_prefix.is_empty()
            || f.key_prefix.len() > 64
            || !f.key_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            self.err(
                "redis.key_prefix",
                "must be 1..=64 printable ASCII characters without spaces",
            );
            return None;
        }
        if let (Some(lo), Some(hi)) = (reconnect_min, reconnect_max)
            && lo > hi
        {
            self.err(
                "redis.reconnect_max_ms",
                "must not be smaller than redis.reconnect_min_ms",
            );
            return None;
        }
        Some(RedisConfig {
            url,
            timeout: timeout?,
            key_prefix: f.key_prefix,
            reconnect_min: reconnect_min?,
            reconnect_max: reconnect_max?,
        })
    }

    fn rules(
        &mut self,
        rules: RulesSections,
        default_enquire: Duration,
        env: &dyn Fn(&str) -> Option<String>,
        warnings: &mut Vec<ConfigError>,
    ) -> Option<RulesConfig> {
        let mut ok = true;
        let mut links = BTreeMap::new();
        // Links already reported, so pools naming them do not add "no such link" on top.
        let mut broken_links = rules.broken_links.clone();
        for (id, f) in rules.links {
            match self.link(id, f, default_enquire, env) {
                Some(link) => {
                    links.insert(LinkId(id), link);
                }
                None => {
                    ok = false;
                    broken_links.insert(id);
                }
            }
        }
        let known_links: HashSet<u32> = links
            .keys()
            .map(|l| l.0)
            .chain(broken_links.iter().copied())
            .collect();
        let pool_ids: HashSet<u32> = rules
            .pools
            .keys()
            .copied()
            .chain(rules.broken_pools.iter().copied())
            .collect();
        for &id in &pool_ids {
            if known_links.contains(&id) {
                ok = false;
                self.err(
                    format!("pools.{id}"),
                    format!("id {id} is also a link id; links and pools share one namespace (the API's `esme` names either)"),
                );
            }
        }
        if links.is_empty() && broken_links.is_empty() {
            warnings.push(self.file.error(
                "links",
                "no links are configured: every send will answer unknown esme",
            ));
        }
        let mut pools = BTreeMap::new();
        for (id, f) in rules.pools {
            match self.pool(id, f, &links, &broken_links, &pool_ids, warnings) {
                Some(pool) => {
                    pools.insert(PoolId(id), pool);
                }
                None => ok = false,
            }
        }
        (ok && broken_links.is_empty() && rules.broken_pools.is_empty())
            .then_some(RulesConfig { links, pools })
    }

    fn link(
        &mut self,
        id: u32,
        f: LinkFile,
        default_enquire: Duration,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<LinkConfig> {
        let k = |name: &str| format!("links.{id}.{name}");
        let host =
            if f.host.is_empty() || f.host.len() > 253 || f.host.contains(char::is_whitespace) {
                self.err(
                    k("host"),
                    "must be a host name or IP address (1..=253 characters, no spaces)",
                );
                None
            } else {
                Some(f.host)
            };
        let port = self.int::<u16>(&k("port"), f.port, 1, 65_535);
        let system_id = self
            .c_octet(&k("system_id"), &f.system_id, 1, 15)
            .then_some(f.system_id);
        let password = self.password(id, f.password, f.password_file, f.password_env, env);
        let system_type = self
            .c_octet(&k("system_type"), &f.system_type, 0, 12)
            .then_some(f.system_type);
        let binds = self.nz_u32(&k("binds"), f.binds, 64);
        let window = self.nz_u32(&k("window"), f.window, 1000);
        let max_pending = self.nz_u32(&k("max_pending"), f.max_pending, 1_000_000);
        let enquire_interval = match f.enquire_interval_s {
            Some(s) => self.secs(&k("enquire_interval_s"), s, 1, 3600),
            None => Some(default_enquire),
        };
        let resp_timeout = self.millis(&k("resp_timeout_ms"), f.resp_timeout_ms, 100, 300_000);
        let connect_timeout =
            self.millis(&k("connect_timeout_ms"), f.connect_timeout_ms, 100, 120_000);
        let reconnect_min = self.millis(&k("reconnect_min_ms"), f.reconnect_min_ms, 10, 600_000);
        let reconnect_max = match reconnect_min {
            Some(min) if f.reconnect_max_ms < min.as_millis() as i64 => {
                self.err(
                    k("reconnect_max_ms"),
                    format!(
                        "must be at least reconnect_min_ms ({}), got {}",
                        min.as_millis(),
                        f.reconnect_max_ms
                    ),
                );
                None
            }
            _ => self.millis(&k("reconnect_max_ms"), f.reconnect_max_ms, 10, 3_600_000),
        };
        let throttle_backoff =
            self.millis(&k("throttle_backoff_ms"), f.throttle_backoff_ms, 1, 600_000);
        let esme_rate = self.nz_u32(&k("esme_rate"), f.esme_rate, 100_000);
        let esme_rate_burst = match f.esme_rate_burst {
            Some(b) => self.nz_u32(&k("esme_rate_burst"), b, 1_000_000),
            None => esme_rate,
        };
        let max_parts = self
            .int::<u8>(&k("max_parts"), f.max_parts, 1, 255)
            .and_then(NonZeroU8::new);
        let source_ton = self.int::<u8>(&k("source_ton"), f.source_ton, 0, 6);
        let dest_ton = self.int::<u8>(&k("dest_ton"), f.dest_ton, 0, 6);
        let source_npi = self.npi(&k("source_npi"), f.source_npi);
        let dest_npi = self.npi(&k("dest_npi"), f.dest_npi);
        let registered_delivery =
            self.int::<u8>(&k("registered_delivery"), f.registered_delivery, 0, 0x1F);
        let mut whitelist = Some(Vec::with_capacity(f.whitelist.len()));
        for (i, text) in f.whitelist.iter().enumerate() {
            match text.parse::<Cidr>() {
                Ok(c) => whitelist.as_mut().map(|w| w.push(c)).unwrap_or(()),
                Err(e) => {
                    self.err(
                        format!("links.{id}.whitelist.{i}"),
                        format!("not a network: {e}"),
                    );
                    whitelist = None;
                }
            }
        }
        Some(LinkConfig {
            id: LinkId(id),
            host: host?,
            port: port?,
            system_id: system_id?,
            password: password?,
            system_type: system_type?,
            bind_mode: f.bind_mode,
            binds: binds?,
            window: window?,
            max_pending: max_pending?,
            enquire_interval: enquire_interval?,
            resp_timeout: resp_timeout?,
            connect_timeout: connect_timeout?,
            reconnect_min: reconnect_min?,
            reconnect_max: reconnect_max?,
            throttle_backoff: throttle_backoff?,
            esme_rate: esme_rate?,
            esme_rate_burst: esme_rate_burst?,
            resp_id_format: f.resp_id_format,
            dlr_id_format: f.dlr_id_format,
            segmentation: f.segmentation,
            max_parts: max_parts?,
            source_ton: source_ton?,
            source_npi: source_npi?,
            dest_ton: dest_ton?,
            dest_npi: dest_npi?,
            registered_delivery: registered_delivery?,
            enabled: f.enabled,
            whitelist: whitelist?,
        })
    }

    fn npi(&mut self, key: &str, value: i64) -> Option<u8> {
        if VALID_NPI.contains(&value) {
            u8::try_from(value).ok()
        } else {
            self.err(
                key,
                format!("must be one of {VALID_NPI:?} (SMPP 3.4 NPI), got {value}"),
            );
            None
        }
    }

    /// Precedence: env `SMSGW_LINK_<id>_PASSWORD`, then the one source set in the file.
    /// Never puts the password itself into a message.
    fn password(
        &mut self,
        id: u32,
        inline: Option<Secret>,
        file: Option<String>,
        env_name: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let k = |name: &str| format!("links.{id}.{name}");
        let set = [inline.is_some(), file.is_some(), env_name.is_some()]
            .iter()
            .filter(|s| **s)
            .count();
        if set > 1 {
            self.err(
                k("password"),
                "set only one of password, password_file, password_env",
            );
            return None;
        }
        let override_name = password_env_var(id);
        let (key, value) = if let Some(v) = env(&override_name) {
            (override_name, v)
        } else if let Some(s) = inline {
            (k("password"), s.expose().to_string())
        } else if let Some(name) = env_name {
            match env(&name) {
                Some(v) => (k("password_env"), v),
                None => {
                    self.err(
                        k("password_env"),
                        format!("environment variable `{name}` is not set"),
                    );
                    return None;
                }
            }
        } else if let Some(path) = file {
            let resolved = resolve_relative(self.file.path, Path::new(&path));
            match std::fs::read_to_string(&resolved) {
                // One trailing newline is what `echo secret > file` and most secret stores add;
                // it is never part of the password.
                Ok(v) => (
                    k("password_file"),
                    v.strip_suffix('\n')
                        .map(|v| v.strip_suffix('\r').unwrap_or(v))
                        .unwrap_or(&v)
                        .to_string(),
                ),
                Err(e) => {
                    self.err(
                        k("password_file"),
                        format!("cannot read {}: {e}", resolved.display()),
                    );
                    return None;
                }
            }
        } else {
            self.err(
                k("password"),
                format!("required: set password, password_file or password_env (or the environment variable {override_name})"),
            );
            return None;
        };
        if value.len() > 8 || !value.bytes().all(|b| b.is_ascii() && b != 0) {
            self.err(
                key,
                "the password must be 0..=8 ASCII bytes without NUL (SMPP 3.4 limit)",
            );
            return None;
        }
        Some(Secret::new(value))
    }

    fn pool(
        &mut self,
        id: u32,
        f: PoolFile,
        links: &BTreeMap<LinkId, LinkConfig>,
        broken_links: &HashSet<u32>,
        pool_ids: &HashSet<u32>,
        warnings: &mut Vec<ConfigError>,
    ) -> Option<PoolConfig> {
        let mut ok = true;
        let name = match f.name {
            Some(n) if n.trim().is_empty() || n.len() > 64 => {
                self.err(format!("pools.{id}.name"), "must be 1..=64 characters");
                ok = false;
                None
            }
            other => other,
        };
        let members_key = format!("pools.{id}.members");
        if f.members.is_empty() {
            self.err(&members_key, "a pool needs at least one member");
            return None;
        }
        if f.members.len() > MAX_POOL_MEMBERS {
            self.err(
                &members_key,
                format!(
                    "at most {MAX_POOL_MEMBERS} members, got {}",
                    f.members.len()
                ),
            );
            return None;
        }
        let mut seen = HashSet::new();
        let mut members = Vec::with_capacity(f.members.len());
        for (i, m) in f.members.iter().enumerate() {
            let key = join(&members_key, &i.to_string());
            let weight = self.nz_u32(&join(&key, "weight"), m.weight, 10_000);
            let link_key = join(&key, "link");
            let link = match u32::try_from(m.link) {
                Ok(l) if l > 0 => Some(l),
                _ => {
                    self.err(
                        &link_key,
                        format!("must be a link id 1..=4294967295, got {}", m.link),
                    );
                    None
                }
            };
            let link = link.and_then(|l| {
                if let Some(cfg) = links.get(&LinkId(l)) {
                    if !cfg.can_submit() {
                        self.err(
                            &link_key,
                            format!("link {l} binds as receiver only and cannot carry messages"),
                        );
                        return None;
                    }
                    Some(LinkId(l))
                } else if broken_links.contains(&l) {
                    None // already reported at links.<l>
                } else if pool_ids.contains(&l) {
                    self.err(
                        &link_key,
                        format!("{l} is a pool; pools cannot contain pools"),
                    );
                    None
                } else {
                    self.err(&link_key, format!("no link with id {l} in [links]"));
                    None
                }
            });
            if let Some(l) = link
                && !seen.insert(l)
            {
                self.err(
                    &link_key,
                    format!("link {l} is listed twice; give it one entry with the summed weight"),
                );
                ok = false;
            }
            match (link, weight) {
                (Some(link), Some(weight)) => members.push(PoolMember { link, weight }),
                _ => ok = false,
            }
        }
        if ok
            && members
                .iter()
                .all(|m| links.get(&m.link).is_some_and(|l| !l.enabled))
        {
            warnings.push(self.file.error(
                &members_key,
                "every member link is disabled: this pool will answer no_route",
            ));
        }
        ok.then_some(PoolConfig {
            id: PoolId(id),
            name,
            members,
        })
    }
}

/// The environment variable that overrides link `id`'s password.
pub fn password_env_var(id: u32) -> String {
    format!("SMSGW_LINK_{id}_PASSWORD")
}

fn resolve_relative(config_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) => dir.join(path),
        None => path.to_path_buf(),
    }
}

/// The host name (what Kubernetes sets to the pod name), made safe for ids.
fn default_instance_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "smsgw".to_string()
    } else {
        id
    }
}
