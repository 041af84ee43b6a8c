//! The file layer: structs that mirror `smsgw.toml` and `smpp_rules.toml` key for key.
//!
//! Units are in the key names (`_ms`, `_s`, `_us`, `_bytes`) so a file reads unambiguously.
//! Integers are read wide (`i64`/`u64`) so that an out-of-range value reaches validation and is
//! reported with its range, instead of failing inside serde with a bare "expected u16".
//! Defaults live here (`Default` impls), ranges live in `validate.rs`.

use serde::Deserialize;

use super::types::{
    BindMode, FsyncPolicy, IdFormat, LogFormat, OnRedisDown, OnStateUnavailable, Secret,
    Segmentation, StateBackend,
};

/// `smsgw.toml`. Sections are deserialized one at a time by the loader, so that a mistake in
/// one section does not hide mistakes in another.
pub const SMSGW_SECTIONS: &[&str] = &[
    "server",
    "state",
    "log",
    "health",
    "routing",
    "limits",
    "redis",
    "security",
    "policy",
    "cdr",
    "callbacks",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub http_addr: String,
    pub grpc_addr: String,
    pub grpc_enabled: bool,
    pub shards: i64,
    pub max_body_bytes: i64,
    pub max_connections_per_shard: i64,
    pub max_pipeline_depth: i64,
    pub request_timeout_ms: i64,
    pub shutdown_timeout_ms: i64,
    pub instance_id: String,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            http_addr: "127.0.0.1:8088".into(),
            grpc_addr: "127.0.0.1:44044".into(),
            grpc_enabled: true,
            shards: 0,
            max_body_bytes: 64 * 1024,
            max_connections_per_shard: 10_000,
            max_pipeline_depth: 64,
            request_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
            instance_id: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateFile {
    pub backend: StateBackend,
    pub path: String,
    pub ttl_s: i64,
    pub fsync: FsyncPolicy,
    pub batch_max: i64,
    pub batch_delay_us: i64,
    pub on_unavailable: OnStateUnavailable,
    pub op_timeout_ms: i64,
    pub resubmit_max_age_s: i64,
    /// `[state.aerospike]`: used when `backend = "aerospike"` (validated either way).
    pub aerospike: crate::state::aerospike::AerospikeFile,
    /// Capacity of the (non-durable) memory backend, in records.
    pub memory_max_records: i64,
    pub engine: crate::config::EmbeddedEngine,
    pub hot_max_records: i64,
    pub hot_s: i64,
    pub checkpoint_interval_ms: i64,
    pub checkpoint_mib: i64,
    pub key_filter_mib: i64,
    pub sync_linger_us: i64,
}

impl Default for StateFile {
    fn default() -> Self {
        StateFile {
            backend: StateBackend::Embedded,
            path: "var/state".into(),
            ttl_s: 86_400,
            fsync: FsyncPolicy::Batch,
            batch_max: 256,
            batch_delay_us: 0,
            on_unavailable: OnStateUnavailable::Reject,
            op_timeout_ms: 1_000,
            resubmit_max_age_s: 3_600,
            aerospike: crate::state::aerospike::AerospikeFile::default(),
            memory_max_records: crate::state::memory::DEFAULT_MAX_RECORDS as i64,
            engine: crate::config::EmbeddedEngine::Journal,
            hot_max_records: 1_000_000,
            hot_s: 30,
            checkpoint_interval_ms: 5_000,
            checkpoint_mib: 64,
            key_filter_mib: 16,
            sync_linger_us: 1_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    pub check_interval_s: i64,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            check_interval_s: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingFile {
    pub cross_shard_capacity: i64,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            cross_shard_capacity: 1024,
        }
    }
}

/// `[limits]`: L1 (per node) and L2 (cluster-wide, Redis) rate limits, in SMPP parts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Limit of every app without its own `[limits.apps.<id>]`; 0 = none.
    pub app_rate_per_s: i64,
    /// 0 → equal to the rate (one second's worth).
    pub app_burst: i64,
    /// Per-app limits by app id.
    pub apps: std::collections::BTreeMap<String, AppLimitFile>,
    /// Enforce each link's `esme_rate` (and each pool's healthy capacity).
    pub links: bool,
    pub on_redis_down: OnRedisDown,
    pub expected_replicas: i64,
    pub lease_max: i64,
    pub lease_ttl_ms: i64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            app_rate_per_s: 0,
            app_burst: 0,
            apps: Default::default(),
            links: true,
            on_redis_down: OnRedisDown::FailOpen,
            expected_replicas: 1,
            lease_max: 100,
            lease_ttl_ms: 1000,
        }
    }
}

/// `[limits.apps.<id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimitFile {
    pub rate_per_s: i64,
    #[serde(default)]
    pub burst: Option<i64>,
}

/// `[redis]`: the shared Redis of a cluster. No `url` → no Redis (L1-only limits).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisFile {
    pub url: String,
    pub timeout_ms: i64,
    pub key_prefix: String,
    pub reconnect_min_ms: i64,
    pub reconnect_max_ms: i64,
}

impl Default for RedisFile {
    fn default() -> Self {
        RedisFile {
            url: String::new(),
            timeout_ms: 50,
            key_prefix: "smsgw".into(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
        }
    }
}

/// `smpp_rules.toml` has two tables of numbered entries.
pub const RULES_SECTIONS: &[&str] = &["links", "pools"];

/// `[links.<id>]`. `host`, `system_id`, `esme_rate` and one password source are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    pub host: String,
    #[serde(default = "defaults::port")]
    pub port: i64,
    pub system_id: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub system_type: String,
    #[serde(default = "defaults::bind_mode")]
    pub bind_mode: BindMode,
    #[serde(default = "defaults::one")]
    pub binds: i64,
    #[serde(default = "defaults::window")]
    pub window: i64,
    #[serde(default = "defaults::max_pending")]
    pub max_pending: i64,
    /// Absent → `[health] check_interval_s`.
    #[serde(default)]
    pub enquire_interval_s: Option<i64>,
    #[serde(default = "defaults::resp_timeout_ms")]
    pub resp_timeout_ms: i64,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: i64,
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: i64,
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: i64,
    #[serde(default = "defaults::throttle_backoff_ms")]
    pub throttle_backoff_ms: i64,
    pub esme_rate: i64,
    /// Absent → equal to `esme_rate` (one second's worth).
    #[serde(default)]
    pub esme_rate_burst: Option<i64>,
    #[serde(default = "defaults::id_format")]
    pub resp_id_format: IdFormat,
    #[serde(default = "defaults::id_format")]
    pub dlr_id_format: IdFormat,
    #[serde(default = "defaults::segmentation")]
    pub segmentation: Segmentation,
    #[serde(default = "defaults::max_parts")]
    pub max_parts: i64,
    #[serde(default)]
    pub source_ton: i64,
    #[serde(default)]
    pub source_npi: i64,
    #[serde(default = "defaults::one")]
    pub dest_ton: i64,
    #[serde(default = "defaults::one")]
    pub dest_npi: i64,
    #[serde(default = "defaults::one")]
    pub registered_delivery: i64,
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default)]
    pub whitelist: Vec<String>,
}

/// `[pools.<id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    #[serde(default)]
    pub name: Option<String>,
    pub members: Vec<PoolMemberFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMemberFile {
    pub link: i64,
    #[serde(default = "defaults::one")]
    pub weight: i64,
}

mod defaults {
    use super::*;

    pub fn port() -> i64 {
        2775
    }
    pub fn one() -> i64 {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn window() -> i64 {
        10
    }
    pub fn max_pending() -> i64 {
        1000
    }
    pub fn resp_timeout_ms() -> i64 {
        10_000
    }
    pub fn connect_timeout_ms() -> i64 {
        5_000
    }
    pub fn reconnect_min_ms() -> i64 {
        500
    }
    pub fn reconnect_max_ms() -> i64 {
        30_000
    }
    pub fn throttle_backoff_ms() -> i64 {
        200
    }
    pub fn max_parts() -> i64 {
        10
    }
    pub fn bind_mode() -> BindMode {
        BindMode::Transceiver
    }
    pub fn id_format() -> IdFormat {
        IdFormat::AsIs
    }
    pub fn segmentation() -> Segmentation {
        Segmentation::Udh8
    }
}
