//! The validated runtime configuration: what the rest of the gateway reads.
//!
//! Every value here has passed validation, so consumers never re-check ranges: durations are
//! `Duration`, counts that must be positive are `NonZero*`, addresses are `SocketAddr`, choices
//! are enums. The file layer (`file.rs`) mirrors the TOML; `validate.rs` turns one into the other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::smpp::session::BindMode as SessionBindMode;

/// Both configuration files, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub state: StateConfig,
    pub log: LogConfig,
    pub health: HealthConfig,
    pub routing: RoutingConfig,
    pub limits: LimitsConfig,
    pub redis: RedisConfig,
    /// `[security]`: authentication (see docs/security.md).
    pub security: crate::auth::SecurityConfig,
    /// `[policy]`: contact policy (see docs/limits-and-policy.md).
    pub policy: crate::policy::PolicyConfig,
    /// `[cdr]`: CDR export (see docs/operations.md#cdr-export).
    pub cdr: crate::cdr::CdrConfig,
    /// `[callbacks]`: delivery-status webhooks (see docs/operations.md#delivery-callbacks).
    pub callbacks: crate::callback::CallbackConfig,
    /// Links and pools from `smpp_rules.toml`.
    pub rules: RulesConfig,
    /// Problems that do not stop the gateway (e.g. a pool whose members are all disabled).
    pub warnings: Vec<super::ConfigError>,
}

/// `[server]`: ingress listeners and the shard runtime.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Whether `serve` starts the gRPC listener on `grpc_addr`.
    pub grpc_enabled: bool,
    pub shards: ShardCount,
    /// Largest accepted request body; bigger bodies get 413.
    pub max_body_bytes: NonZeroUsize,
    pub max_connections_per_shard: NonZeroU32,
    /// Requests read ahead of their responses on one HTTP/1.1 connection.
    pub max_pipeline_depth: NonZeroU32,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Names this replica in logs, CDRs and generated transaction ids. Never empty.
    pub instance_id: String,
}

/// How many data-plane shards (one monoio runtime pinned to one core each) to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    /// `shards = 0`: one per core this process may run on.
    PerCore,
    Fixed(NonZeroUsize),
}

impl ShardCount {
    /// The concrete count. `PerCore` asks the OS (respects cgroup/affinity limits); falls back to
    /// 1 when the OS cannot tell.
    pub fn resolve(self) -> NonZeroUsize {
        match self {
            ShardCount::Fixed(n) => n,
            ShardCount::PerCore => {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            }
        }
    }
}

/// `[state]`: where message state lives.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// Directory of the embedded store (relative paths are relative to the working directory).
    pub path: PathBuf,
    /// How long a message record is kept after its last change.
    pub ttl: Duration,
    pub fsync: FsyncPolicy,
    /// Most records written in one batch.
    pub batch_max: NonZeroUsize,
    /// How long the writer waits to fill a batch once it holds at least one record.
    pub batch_delay: Duration,
    pub on_unavailable: OnStateUnavailable,
    /// A state write not completed within this fails with `Unavailable` (embedded backend).
    pub op_timeout: Duration,
    /// Crash recovery resubmits a never-sent message only if it was accepted less than this
    /// long ago; older ones are recorded failed (zero: never resubmit).
    pub resubmit_max_age: Duration,
    /// `[state.aerospike]` (with `ttl_secs` from `ttl`); used when `backend = "aerospike"`.
    pub aerospike: crate::state::aerospike::AerospikeConfig,
    /// Most records the memory backend holds (`backend = "memory"` only).
    pub memory_max_records: usize,
    /// Which engine the embedded backend runs.
    pub engine: EmbeddedEngine,
    /// Journal engine: most records held in memory.
    pub hot_max_records: usize,
    /// Journal engine: how long a checkpointed, unchanged record stays in memory.
    pub hot: Duration,
    /// Journal engine: most time between checkpoints while something changed.
    pub checkpoint_interval: Duration,
    /// Journal engine: log bytes that trigger a checkpoint sooner.
    pub checkpoint_bytes: u64,
    /// Journal engine: memory of the filter that spares a new `transaction_id` its cold store
    /// read (0: off).
    pub key_filter_bytes: usize,
    /// Journal engine with `fsync = batch`: most time between two fdatasyncs of the log under
    /// load (the wait adapts to it: `state::wal::WalConfig::sync_linger`).
    pub sync_linger: Duration,
}

/// Engine of `backend = "embedded"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddedEngine {
    /// Hot records in memory, updated by the calling shard; durability from per-thread logs;
    /// fjall as the cold store filled by checkpoints (`state::journal`).
    Journal,
    /// Every write through one fjall writer thread (`state::embedded`); kept to compare and to
    /// fall back to.
    Writer,
}

impl EmbeddedEngine {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddedEngine::Journal => "journal",
            EmbeddedEngine::Writer => "writer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    Embedded,
    Aerospike,
    /// In process memory only: NOT durable (benchmark baseline, tests, development).
    Memory,
}

impl StateBackend {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackend::Embedded => "embedded",
            StateBackend::Aerospike => "aerospike",
            StateBackend::Memory => "memory",
        }
    }
}

/// When a written batch counts as stored (and so when its messages may be answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Each batch is fsync'ed before its messages are answered: survives power loss.
    Batch,
    /// Each batch reaches the OS before its messages are answered; the OS writes it back later:
    /// survives a process crash (kill -9), not a power loss.
    Off,
}

/// What ingress does when the state store cannot take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStateUnavailable {
    /// Refuse new messages with 503 rather than send messages nobody can track.
    Reject,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or `info,smsgw::smpp=debug`.
    /// `RUST_LOG`, when set, wins (applied by whoever installs the subscriber).
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Default enquire_link interval of every link (a link's `enquire_interval_s` overrides it).
    pub check_interval: Duration,
}

/// `[routing]`.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Capacity of each shard's inbound channel for messages handed over by other shards
    /// (used when the local shard has no bind of the chosen link). Full → 503.
    pub cross_shard_capacity: NonZeroUsize,
}

/// `[limits]`: rate limits in SMPP parts per second (see docs/limits-and-policy.md).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Limit of apps without their own entry; `None` = unlimited.
    pub app_default: Option<RateLimit>,
    pub apps: std::collections::BTreeMap<u64, RateLimit>,
    /// Enforce links' `esme_rate` and pools' healthy capacity.
    pub links: bool,
    pub on_redis_down: OnRedisDown,
    /// Replicas sharing the cluster-wide limits; while Redis is down (fail-open) each node
    /// allows 1/`expected_replicas` of every limit.
    pub expected_replicas: NonZeroU32,
    /// Most parts one Redis lease grants.
    pub lease_max: NonZeroU32,
    /// Unused leased parts expire after this long.
    pub lease_ttl: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            app_default: None,
            apps: Default::default(),
            links: true,
            on_redis_down: OnRedisDown::FailOpen,
            expected_replicas: NonZeroU32::MIN,
            lease_max: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            lease_ttl: Duration::from_secs(1),
        }
    }
}

/// A rate in parts per second and a burst in parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_per_s: NonZeroU32,
    pub burst: NonZeroU32,
}

/// What the limiter does while Redis is down or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisDown {
    /// Keep admitting with this node's share (1/`expected_replicas`) of each limit, locally.
    FailOpen,
    /// Refuse with 503 `overloaded` (and `Retry-After`) until Redis is back.
    FailClosed,
}

/// `[redis]`. Debug hides the password a `redis://user:password@host` URL may carry.
#[derive(Clone, Default)]
pub struct RedisConfig {
    /// `None`: no Redis; limits are node-local (L1) only.
    pub url: Option<String>,
    pub timeout: Duration,
    pub key_prefix: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redact_url_password))
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// `redis://user:pw@host:6379/0` → `redis://user:***@host:6379/0`; URLs without a password
/// are returned unchanged. For logs and Debug output only.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', and the credentials at its last '@'.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match credentials.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // `redis://password@host` is how some clients spell a password without a user.
        None => "***".to_string(),
    };
    format!("{scheme}://{user}@{host}{path}")
}

/// `smpp_rules.toml`: links and pools. Link ids and pool ids share one namespace.
#[derive(Debug, Clone, Default)]
pub struct RulesConfig {
    pub links: BTreeMap<LinkId, LinkConfig>,
    pub pools: BTreeMap<PoolId, PoolConfig>,
}

/// A link's numeric id (`[links.100]` → `LinkId(100)`); never 0 (0 is "unset" in protobuf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

/// A pool's numeric id (`[pools.500]` → `PoolId(500)`); never 0, never equal to a link id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One SMSC account (an "ESME" in the reference product): where to connect, how to bind, how
/// fast it may be driven.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub id: LinkId,
    pub host: String,
    pub port: u16,
    /// 1..=15 bytes (SMPP 3.4 C-Octet String of at most 16).
    pub system_id: String,
    /// 0..=8 bytes (SMPP 3.4 C-Octet String of at most 9).
    pub password: Secret,
    /// 0..=12 bytes.
    pub system_type: String,
    pub bind_mode: BindMode,
    /// Number of binds (each one session, or a transmitter+receiver pair for `tx+rx`), spread
    /// over shards by `route::binds_for_shard`.
    pub binds: NonZeroU32,
    /// Outstanding submit_sm per bind (1..=1000).
    pub window: NonZeroU32,
    /// Submits queued per bind behind a full window; beyond it the bind refuses more.
    pub max_pending: NonZeroU32,
    pub enquire_interval: Duration,
    pub resp_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// First back-off after a throttling answer (ESME_RTHROTTLED / ESME_RMSGQFUL).
    pub throttle_backoff: Duration,
    /// Contracted message parts per second for the whole link (all binds together).
    pub esme_rate: NonZeroU32,
    /// Token-bucket depth for `esme_rate`.
    pub esme_rate_burst: NonZeroU32,
    /// How this SMSC writes message ids in submit_sm_resp.
    pub resp_id_format: IdFormat,
    /// How this SMSC writes message ids in delivery receipts.
    pub dlr_id_format: IdFormat,
    pub segmentation: Segmentation,
    /// Most parts one message may be split into (1..=255).
    pub max_parts: NonZeroU8,
    pub source_ton: u8,
    pub source_npi: u8,
    pub dest_ton: u8,
    pub dest_npi: u8,
    /// registered_delivery byte of submit_sm (0..=0x1F; 1 = receipt on final outcome).
    pub registered_delivery: u8,
    /// A disabled link is known (its id resolves) but never bound or picked.
    pub enabled: bool,
    /// Client networks allowed to send through this link; empty = no restriction.
    pub whitelist: Vec<Cidr>,
}

impl LinkConfig {
    /// Sessions one bind opens, in order. `tx+rx` is a transmitter plus a receiver.
    pub fn session_modes(&self) -> &'static [SessionBindMode] {
        match self.bind_mode {
            BindMode::Transceiver => &[SessionBindMode::Transceiver],
            BindMode::Transmitter => &[SessionBindMode::Transmitter],
            BindMode::Receiver => &[SessionBindMode::Receiver],
            BindMode::TxRx => &[SessionBindMode::Transmitter, SessionBindMode::Receiver],
        }
    }

    /// Whether this link can carry submit_sm (a receiver-only link only receives receipts/MO).
    pub fn can_submit(&self) -> bool {
        self.bind_mode != BindMode::Receiver
    }

    /// Whether a client address passes this link's whitelist (empty whitelist = everyone).
    pub fn allows(&self, client: IpAddr) -> bool {
        self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.contains(client))
    }
}

/// How a link binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BindMode {
    #[serde(rename = "transceiver")]
    Transceiver,
    #[serde(rename = "transmitter")]
    Transmitter,
    #[serde(rename = "receiver")]
    Receiver,
    /// One transmitter and one receiver session per bind.
    #[serde(rename = "tx+rx")]
    TxRx,
}

/// How an SMSC writes message ids; ids are normalised before correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdFormat {
    AsIs,
    Hex,
    Decimal,
}

/// How long texts are split into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segmentation {
    /// UDH with 8-bit reference number.
    Udh8,
    /// UDH with 16-bit reference number.
    Udh16,
    /// sar_msg_ref_num / sar_total_segments / sar_segment_seqnum TLVs.
    Sar,
    /// One submit_sm carrying the whole text in message_payload.
    Payload,
}

/// A pool: a name for a weighted set of links, balanced by smooth weighted round-robin.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub id: PoolId,
    pub name: Option<String>,
    /// Non-empty, distinct links, at most `MAX_POOL_MEMBERS`.
    pub members: Vec<PoolMember>,
}

/// Most members in one pool: the router keeps a member set in a 64-bit mask.
pub const MAX_POOL_MEMBERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolMember {
    pub link: LinkId,
    /// 1..=10000.
    pub weight: NonZeroU32,
}

/// A credential. Debug prints `***`; there is no Display, so it cannot end up in a format
/// string by accident. Read it with `expose()` where it is sent.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address")]
    Address(String),
    #[error("prefix length `{0}` is not a number")]
    Prefix(String),
    #[error("prefix length {prefix} is longer than {max} bits")]
    PrefixTooLong { prefix: u8, max: u8 },
    #[error("`{0}` has host bits set; did you mean `{1}`?")]
    HostBits(String, String),
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = Self::max_len(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                prefix: prefix_len,
                max,
            });
        }
        let network = Self::mask(addr, prefix_len);
        if network != addr {
            // Rejected rather than silently masked: `10.1.2.3/8` is usually a typo for /32 or
            // /24, and guessing wrong opens a whitelist wider than meant.
            return Err(CidrError::HostBits(
                format!("{addr}/{prefix_len}"),
                format!("{network}/{prefix_len}"),
            ));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        addr.is_ipv4() == self.network.is_ipv4()
            && Self::mask(addr, self.prefix_len) == self.network
    }

    fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(addr_text.to_string()))?;
        let prefix_len = match prefix_text {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| CidrError::Prefix(p.to_string()))?,
            None => Self::max_len(addr),
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}
