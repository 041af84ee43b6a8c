//! Aerospike state backend: message state shared by every gateway replica.
//!
//! # Layout (also in `docs/operations.md#aerospike`)
//!
//! | set | user key | bins | server TTL |
//! |---|---|---|---|
//! | `<prefix>msg` | `"{app_id}:{transaction_id}"` | `app` int, `tx` string, `rec` blob ([`super::codec`]), `st` int (status code), `exp` int (`expires_at_ms`) | `ttl + ttl_grace` at create, unchanged by later writes |
//! | `<prefix>rcpt` | `"{link_id}:{normalised smsc id}"` | `app` int, `tx` string, `part` int, `exp` int | until the message's server TTL ends |
//!
//! Secondary index `<prefix>msg_exp` (numeric, on `msg`'s `exp`), created at start when
//! `create_exp_index` is on: the expiry sweep asks it for `exp <= now` instead of scanning the
//! whole set, so a sweep reads only records within the grace period, not a day of traffic.
//! Without the index (not created yet, no privilege to create it) the sweep falls back to a
//! filtered scan of the set and tries the index again a minute later.
//!
//! `app_id` is a decimal number, so the first `:` splits both keys unambiguously whatever the
//! transaction or SMSC id contains. `rec` is the whole record in the embedded backend's binary
//! codec, so fields added to the model flow through without a layout change; `st` and `exp`
//! exist only so that scans can filter on the server. `app`/`tx` repeat the key because the
//! codec leaves key fields out and scans do not return user keys (we do not `send_key`).
//!
//! # Consistency without multi-record transactions
//!
//! Aerospike's AP namespaces have atomic single-record writes only, so:
//!
//! * `create` is one `CREATE_ONLY` write: of two concurrent creates of one key (on any
//!   replicas) exactly one succeeds; the other reads the stored record and answers `Exists`.
//! * `update`, `apply_receipt` and `expire_due` are read–modify–write with the generation read
//!   (`EXPECT_GEN_EQUAL`), retried at most `write_retries` times on a generation conflict. The
//!   transitions are `MessageRecord::apply` / `apply_receipt` from the model, never re-coded.
//! * The receipt index entry of a part is written BEFORE the message write that marks the part
//!   `Submitted` (one atomic write of both is impossible here). If the message write then fails,
//!   the entry points at a part that does not carry that SMSC id; `apply_receipt` checks the
//!   part's link and SMSC id and answers `NotFound` in that case, so a dangling entry is
//!   harmless and expires with its TTL. A receipt that finds the entry before the message write
//!   lands also gets `NotFound`, which the receipt path already treats as "maybe transient".
//! * `expire_due` on several replicas: each one finds the same due records, but the
//!   generation-checked write lets exactly one of them turn a record `Expired`; the others get a
//!   generation error and leave it out of their result, so each record is returned (and gets
//!   its CDR) once. If that write's outcome is in doubt (timeout after the server applied it),
//!   the record is `Expired` without being returned: at most once, never twice.
//!
//! # TTL
//!
//! Every read treats a record past `expires_at_ms` as absent, like the embedded backend. The
//! server deletes it `ttl_grace_s` later, which leaves the expiry sweep (every few seconds, on
//! every replica) time to find records still non-final and turn them `Expired`. The namespace
//! must expire records (`nsup-period` non-zero), otherwise the server refuses writes with a TTL.
//!
//! # Futures and bounds
//!
//! Each op is a task on the tokio side runtime; the returned future is a tokio oneshot
//! receiver, which needs no runtime to be awaited (monoio shards await it). At most
//! `max_in_flight` ops run at once (a semaphore; beyond it an op fails at once with
//! `Overloaded`), and each is bounded by `op_timeout_ms` (scans by `scan_timeout_ms`) →
//! `Unavailable`. Many ops in flight share the client's per-node connection pools, so writes
//! are pipelined across connections. Batching across ops does not fit: each op's write depends
//! on its own read (generation check). Within an op, several receipt index entries (a
//! multipart update) go in one batch write; an expiry sweep writes its records concurrently,
//! at most 64 at a time.
//!
//! Needs Aerospike server 6.0 or later (batch writes, partition-aware secondary-index queries,
//! filter expressions).

use super::{check_smsc_id, check_txid, check_update, ready};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aerospike::expressions::{and, eq, gt, int_bin, int_val, le, or};
use aerospike::operations::{self, Operation};
use aerospike::query::Filter;
use aerospike::{
    AdminPolicy, AuthMode, BatchOperation, BatchPolicy, BatchWritePolicy, Bin, Bins, Client,
    ClientPolicy, CollectionIndexType, Expiration, GenerationPolicy, IndexType, Key,
    PartitionFilter, QueryPolicy, ReadPolicy, Record, RecordExistsAction, ResultCode, Statement,
    Value, WritePolicy,
};
use futures::StreamExt;
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};

use super::codec;
use super::{
    CreateOutcome, MessageKey, MessageRecord, PartUpdate, ReceiptInfo, ReceiptOutcome, ScanCursor,
    ScanPage, StateError, StateStore, Status, StoreFuture, UpdateOutcome, unix_ms,
};

/// Bin names (Aerospike allows at most 15 bytes).
const BIN_APP: &str = "app";
const BIN_TX: &str = "tx";
const BIN_REC: &str = "rec";
const BIN_STATUS: &str = "st";
const BIN_EXP: &str = "exp";
const BIN_PART: &str = "part";

/// Scan cursors kept per store (they live in memory: an Aerospike partition cursor has no
/// stable byte form). The oldest is dropped beyond this; using a dropped cursor is `Invalid`.
const MAX_CURSORS: usize = 64;

/// Concurrent generation-checked writes of one `expire_due` call.
const EXPIRE_CONCURRENCY: usize = 64;

/// `[state.aerospike]` as written in `smsgw.toml`. Integers are read wide so that a bad value
/// reaches validation and is reported with its range.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AerospikeFile {
    /// Seed nodes, `host:port[,host:port...]`.
    pub hosts: String,
    /// Namespace holding both sets.
    pub namespace: String,
    /// Prefix of the set names (`<prefix>msg`, `<prefix>rcpt`).
    pub set_prefix: String,
    /// User for internal authentication; empty = no authentication.
    pub user: String,
    /// Name of the environment variable holding the password (when `user` is set).
    pub password_env: String,
    /// Extra server-side lifetime after a record's expiry, seconds.
    pub ttl_grace_s: i64,
    /// Bound of one op (all its round trips and retries), ms.
    pub op_timeout_ms: i64,
    /// Bound of one `scan_non_final` page or `expire_due` call, ms.
    pub scan_timeout_ms: i64,
    /// Bound of connecting to the cluster at start, ms.
    pub connect_timeout_ms: i64,
    /// Most ops in flight at once; beyond it ops fail with `Overloaded`.
    pub max_in_flight: i64,
    /// Connection pool size per server node.
    pub max_conns_per_node: i64,
    /// Attempts of a read-modify-write on generation conflicts.
    pub write_retries: i64,
    /// Create the secondary index on `exp` at start (the expiry sweep queries it).
    pub create_exp_index: bool,
}

impl Default for AerospikeFile {
    fn default() -> Self {
        AerospikeFile {
            hosts: "127.0.0.1:3000".into(),
            namespace: "test".into(),
            set_prefix: "smsgw_".into(),
            user: String::new(),
            password_env: String::new(),
            ttl_grace_s: 3600,
            op_timeout_ms: 1000,
            scan_timeout_ms: 30_000,
            connect_timeout_ms: 5000,
            max_in_flight: 4096,
            max_conns_per_node: 256,
            write_retries: 8,
            create_exp_index: true,
        }
    }
}

/// Validated `[state.aerospike]` plus the message TTL from `[state] ttl_s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AerospikeConfig {
    /// Seed nodes, `host:port[,host:port...]`.
    pub hosts: String,
    /// Namespace.
    pub namespace: String,
    /// Set name prefix.
    pub set_prefix: String,
    /// Authentication user (`None`: no authentication).
    pub user: Option<String>,
    /// Environment variable with the password.
    pub password_env: String,
    /// Message TTL, seconds (`[state] ttl_s`).
    pub ttl_secs: u64,
    /// Server-side grace after expiry, seconds.
    pub ttl_grace_secs: u64,
    /// Per-op bound, ms.
    pub op_timeout_ms: u64,
    /// Per-scan bound, ms.
    pub scan_timeout_ms: u64,
    /// Connect bound, ms.
    pub connect_timeout_ms: u64,
    /// Ops in flight.
    pub max_in_flight: usize,
    /// Connections per node.
    pub max_conns_per_node: usize,
    /// Generation-conflict attempts.
    pub write_retries: u32,
    /// Create the `exp` secondary index at start.
    pub create_exp_index: bool,
}

impl Default for AerospikeConfig {
    fn default() -> Self {
        AerospikeFile::default()
            .validate(86_400)
            .expect("defaults are valid")
    }
}

fn ranged<T: TryFrom<i64>>(
    problems: &mut Vec<(&'static str, String)>,
    key: &'static str,
    v: i64,
    lo: i64,
    hi: i64,
) -> Option<T> {
    if v < lo || v > hi {
        problems.push((key, format!("must be in {lo}..={hi}, got {v}")));
        return None;
    }
    T::try_from(v).ok()
}

impl AerospikeFile {
    /// Checks every value; on failure every problem as `(key within [state.aerospike], reason)`.
    pub fn validate(self, ttl_secs: u64) -> Result<AerospikeConfig, Vec<(&'static str, String)>> {
        let mut p = Vec::new();
        let hosts = self.hosts.trim().to_string();
        if hosts.is_empty() {
            p.push(("hosts", "must list at least one host:port".to_string()));
        } else {
            for h in hosts.split(',') {
                let h = h.trim();
                let ok = h
                    .rsplit_once(':')
                    .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    p.push(("hosts", format!("{h:?} is not host:port")));
                }
            }
        }
        // Server limits: namespace names up to 31 bytes, set names up to 63.
        let name_ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&self.namespace, 31) {
            p.push((
                "namespace",
                "must be 1..=31 characters from A-Z a-z 0-9 _ -".to_string(),
            ));
        }
        // 55: the longest derived name, the index `<prefix>msg_exp`, must fit the server's
        // 63-byte index name limit (set names are shorter).
        if !self.set_prefix.is_empty() && !name_ok(&self.set_prefix, 55) {
            p.push((
                "set_prefix",
                "must be 0..=55 characters from A-Z a-z 0-9 _ -".to_string(),
            ));
        }
        let user = (!self.user.is_empty()).then(|| self.user.clone());
        if user.is_some() && self.password_env.trim().is_empty() {
            p.push((
                "password_env",
                "must name the environment variable holding the password when user is set"
                    .to_string(),
            ));
        }
        let ttl_grace_secs = ranged(&mut p, "ttl_grace_s", self.ttl_grace_s, 60, 7 * 86_400);
        let op_timeout_ms = ranged(&mut p, "op_timeout_ms", self.op_timeout_ms, 10, 60_000);
        let scan_timeout_ms = ranged(
            &mut p,
            "scan_timeout_ms",
            self.scan_timeout_ms,
            100,
            600_000,
        );
        let connect_timeout_ms = ranged(
            &mut p,
            "connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            60_000,
        );
        let max_in_flight = ranged(&mut p, "max_in_flight", self.max_in_flight, 1, 1 << 20);
        let max_conns_per_node = ranged(
            &mut p,
            "max_conns_per_node",
            self.max_conns_per_node,
            1,
            65_536,
        );
        let write_retries = ranged(&mut p, "write_retries", self.write_retries, 1, 100);
        if ttl_secs == 0 {
            p.push(("ttl_s", "the message TTL must be at least 1 s".to_string()));
        }
        match (
            ttl_grace_secs,
            op_timeout_ms,
            scan_timeout_ms,
            connect_timeout_ms,
            max_in_flight,
            max_conns_per_node,
            write_retries,
        ) {
            (Some(g), Some(o), Some(s), Some(c), Some(m), Some(n), Some(w)) if p.is_empty() => {
                Ok(AerospikeConfig {
                    hosts,
                    namespace: self.namespace,
                    set_prefix: self.set_prefix,
                    user,
                    password_env: self.password_env.trim().to_string(),
                    ttl_secs,
                    ttl_grace_secs: g,
                    op_timeout_ms: o,
                    scan_timeout_ms: s,
                    connect_timeout_ms: c,
                    max_in_flight: m,
                    max_conns_per_node: n,
                    write_retries: w,
                    create_exp_index: self.create_exp_index,
                })
            }
            _ => Err(p),
        }
    }
}

impl AerospikeConfig {
    /// Name of the message set.
    pub fn msg_set(&self) -> String {
        format!("{}msg", self.set_prefix)
    }

    /// Name of the receipt index set.
    pub fn rcpt_set(&self) -> String {
        format!("{}rcpt", self.set_prefix)
    }

    /// Name of the secondary index on the message set's `exp` bin.
    pub fn exp_index(&self) -> String {
        format!("{}msg_exp", self.set_prefix)
    }

    /// Server TTL of a new message record: its lifetime plus the grace.
    pub fn create_ttl(&self) -> Expiration {
        Expiration::Seconds(clamp_ttl(self.ttl_secs.saturating_add(self.ttl_grace_secs)))
    }

    /// Server TTL of a receipt index entry written at `now_ms` for a message that expires at
    /// `expires_at_ms`: it ends with the message record (rounded up to whole seconds, at least
    /// 1 s so that a zero, which means "namespace default", is never sent).
    pub fn index_ttl(&self, expires_at_ms: u64, now_ms: u64) -> Expiration {
        let end_ms = expires_at_ms.saturating_add(self.ttl_grace_secs.saturating_mul(1000));
        let left_ms = end_ms.saturating_sub(now_ms);
        Expiration::Seconds(clamp_ttl(left_ms.div_ceil(1000)))
    }
}

/// A TTL in the server's u32 seconds, at least 1 (0 = namespace default, which we never want).
fn clamp_ttl(secs: u64) -> u32 {
    u32::try_from(secs)
        .unwrap_or(u32::MAX - 2)
        .clamp(1, u32::MAX - 2)
}

/// User key of a message record.
pub fn msg_user_key(key: &MessageKey) -> String {
    format!("{}:{}", key.app_id, key.transaction_id)
}

/// User key of a receipt index entry.
pub fn rcpt_user_key(link_id: u32, smsc_id: &str) -> String {
    format!("{link_id}:{smsc_id}")
}

/// u64 stored in an Aerospike (signed 64-bit) integer bin, bit for bit.
fn int_u64(v: u64) -> Value {
    Value::Int(i64::from_ne_bytes(v.to_ne_bytes()))
}

/// A millisecond time as a filter value; real times are far below `i64::MAX`.
fn ms_val(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The bins of a message record.
pub fn msg_bins(r: &MessageRecord) -> Vec<Bin> {
    vec![
        Bin::new(BIN_APP, int_u64(r.app_id)),
        Bin::new(BIN_TX, Value::String(r.transaction_id.clone())),
        Bin::new(BIN_REC, Value::Blob(codec::encode_record(r))),
        Bin::new(BIN_STATUS, Value::Int(i64::from(r.status.code()))),
        Bin::new(BIN_EXP, Value::Int(ms_val(r.expires_at_ms))),
    ]
}

/// The bins of a receipt index entry for part `part` of the message `key`.
pub fn rcpt_bins(key: &MessageKey, part: u16, expires_at_ms: u64) -> Vec<Bin> {
    vec![
        Bin::new(BIN_APP, int_u64(key.app_id)),
        Bin::new(BIN_TX, Value::String(key.transaction_id.clone())),
        Bin::new(BIN_PART, Value::Int(i64::from(part))),
        Bin::new(BIN_EXP, Value::Int(ms_val(expires_at_ms))),
    ]
}

fn bin_int(r: &Record, name: &str) -> Result<i64, StateError> {
    match r.bins.get(name) {
        Some(Value::Int(v)) => Ok(*v),
        other => Err(StateError::Corrupt(format!(
            "bin {name}: expected an integer, got {other:?}"
        ))),
    }
}

fn bin_str(r: &Record, name: &str) -> Result<String, StateError> {
    match r.bins.get(name) {
        Some(Value::String(v)) => Ok(v.clone()),
        other => Err(StateError::Corrupt(format!(
            "bin {name}: expected a string, got {other:?}"
        ))),
    }
}

fn bin_key(r: &Record) -> Result<MessageKey, StateError> {
    let app = u64::from_ne_bytes(bin_int(r, BIN_APP)?.to_ne_bytes());
    Ok(MessageKey::new(app, bin_str(r, BIN_TX)?))
}

/// Decodes a message record from its bins.
pub fn decode_msg(r: &Record) -> Result<MessageRecord, StateError> {
    let key = bin_key(r)?;
    let Some(Value::Blob(blob)) = r.bins.get(BIN_REC) else {
        return Err(StateError::Corrupt(format!(
            "bin {BIN_REC}: expected a blob, got {:?}",
            r.bins.get(BIN_REC)
        )));
    };
    codec::decode_record(&key, blob).map_err(StateError::Corrupt)
}

/// Decodes a receipt index entry: `(message key, part, expires_at_ms)`.
pub fn decode_rcpt(r: &Record) -> Result<(MessageKey, u16, u64), StateError> {
    let key = bin_key(r)?;
    let part = u16::try_from(bin_int(r, BIN_PART)?)
        .map_err(|_| StateError::Corrupt("bin part out of range".into()))?;
    let exp = u64::try_from(bin_int(r, BIN_EXP)?)
        .map_err(|_| StateError::Corrupt("bin exp negative".into()))?;
    Ok((key, part, exp))
}

/// What a failed Aerospike call means for the op.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fail {
    /// `KEY_NOT_FOUND`.
    NotFound,
    /// `KEY_EXISTS` (a `CREATE_ONLY` write met a record).
    Exists,
    /// `GENERATION` (someone wrote the record since we read it).
    Generation,
    /// Anything else: the store cannot serve this op.
    Store(StateError),
}

/// Maps a server result code (`None`: a client-side failure such as a timeout, a refused
/// connection or an empty partition map) to what the op does with it.
fn classify(rc: Option<ResultCode>, message: impl FnOnce() -> String) -> Fail {
    match rc {
        Some(ResultCode::KeyNotFoundError) => Fail::NotFound,
        Some(ResultCode::KeyExistsError) => Fail::Exists,
        Some(ResultCode::GenerationError) => Fail::Generation,
        // The server says it is behind: the caller should back off, like a full queue.
        Some(ResultCode::DeviceOverload | ResultCode::KeyBusy) => {
            Fail::Store(StateError::Overloaded)
        }
        _ => Fail::Store(StateError::Unavailable(format!("aerospike: {}", message()))),
    }
}

fn fail(e: &aerospike::Error) -> Fail {
    classify(e.server_result_code(), || e.to_string())
}

/// A store error from a failure that was not expected at that point.
fn unexpected(f: Fail, what: &str) -> StateError {
    match f {
        Fail::Store(e) => e,
        other => StateError::Unavailable(format!("aerospike {what}: unexpected {other:?}")),
    }
}

/// Filter: the record is not final (`st` is Accepted or Submitted).
fn non_final_filter() -> aerospike::expressions::Expression {
    or(vec![
        eq(
            int_bin(BIN_STATUS),
            int_val(i64::from(Status::Accepted.code())),
        ),
        eq(
            int_bin(BIN_STATUS),
            int_val(i64::from(Status::Submitted.code())),
        ),
    ])
}

/// Scan cursors handed out and not yet used, oldest first.
#[derive(Default)]
struct Cursors {
    next_id: u64,
    order: VecDeque<u64>,
    map: HashMap<u64, PartitionFilter>,
}

impl Cursors {
    fn put(&mut self, pf: PartitionFilter) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.map.insert(id, pf);
        self.order.push_back(id);
        while self.order.len() > MAX_CURSORS {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        id
    }

    fn take(&mut self, id: u64) -> Option<PartitionFilter> {
        self.order.retain(|i| *i != id);
        self.map.remove(&id)
    }
}

/// Runs ops as tasks on the side runtime, bounded in count (`max` permits) and time, and
/// answers through a oneshot so that any runtime can await the result. Knows nothing of
/// Aerospike (unit-tested without a server).
struct Runner {
    rt: Handle,
    max: usize,
    permits: Arc<Semaphore>,
    /// False after an op failed for a store reason, true after one succeeded.
    healthy: Arc<AtomicBool>,
    ops: AtomicU64,
}

impl Runner {
    fn new(rt: Handle, max: usize) -> Runner {
        Runner {
            rt,
            max,
            permits: Arc::new(Semaphore::new(max)),
            healthy: Arc::new(AtomicBool::new(true)),
            ops: AtomicU64::new(0),
        }
    }

    /// Ops in flight now.
    fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// Runs `op`: `Overloaded` at once without a free permit, `Unavailable` after
    /// `timeout_ms`, and `Unavailable` (never a hang) when the runtime is gone.
    fn run<T, Fut>(&self, timeout_ms: u64, op: Fut) -> StoreFuture<T>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return ready(Err(StateError::Overloaded));
        };
        self.ops.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let healthy = Arc::clone(&self.healthy);
        // If the runtime is shut down the task is dropped unrun: `tx` goes with it and the
        // receiver below answers Unavailable, so no future hangs.
        drop(self.rt.spawn(async move {
            let limit = Duration::from_millis(timeout_ms);
            let r = match tokio::time::timeout(limit, op).await {
                Ok(r) => r,
                Err(_) => Err(StateError::Unavailable(format!(
                    "aerospike: op timed out after {timeout_ms} ms"
                ))),
            };
            match &r {
                Ok(_) => healthy.store(true, Ordering::Relaxed),
                Err(e) if e.is_unavailable() => healthy.store(false, Ordering::Relaxed),
                Err(_) => {}
            }
            // Released before the answer, so a caller that saw every answer sees every permit
            // back (`flush`, `op_stats`).
            drop(permit);
            let _ = tx.send(r);
        }));
        answer(rx)
    }

    /// Resolves once no op is in flight (all permits free), within `timeout_ms`. The
    /// semaphore is fair, so while a flush waits new ops are refused (`Overloaded`): flush is
    /// for shutdown.
    fn flush(&self, timeout_ms: u64) -> StoreFuture<()> {
        let (tx, rx) = oneshot::channel();
        let permits = Arc::clone(&self.permits);
        let n = u32::try_from(self.max).unwrap_or(u32::MAX);
        let limit = Duration::from_millis(timeout_ms);
        drop(self.rt.spawn(async move {
            let r = match tokio::time::timeout(limit, permits.acquire_many(n)).await {
                Ok(Ok(_all)) => Ok(()),
                Ok(Err(_)) => Err(StateError::Unavailable("aerospike store closed".into())),
                Err(_) => Err(StateError::Unavailable(
                    "aerospike: in-flight ops did not finish within the op timeout".into(),
                )),
            };
            let _ = tx.send(r);
        }));
        answer(rx)
    }
}

/// The caller's side of a task's oneshot; a dropped task (runtime shut down) is `Unavailable`.
fn answer<T: Send + 'static>(rx: oneshot::Receiver<Result<T, StateError>>) -> StoreFuture<T> {
    Box::pin(async move {
        rx.await.unwrap_or_else(|_| {
            Err(StateError::Unavailable(
                "aerospike: runtime shut down".into(),
            ))
        })
    })
}

struct Inner {
    client: Arc<Client>,
    runner: Runner,
    cfg: AerospikeConfig,
    msg_set: String,
    rcpt_set: String,
    cursors: Mutex<Cursors>,
    /// Tags this store's cursors so that another instance's cursor is refused, not misread.
    instance: u64,
    /// Unix ms before which the sweep does not try the `exp` index (it was missing).
    exp_index_retry_at_ms: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the client's tend task and closes its pools; nothing waits for it.
        let client = Arc::clone(&self.client);
        drop(self.runner.rt.spawn(async move {
            let _ = client.close().await;
        }));
    }
}

/// Creates the secondary index on the message set's `exp` bin (see the module docs). The
/// server returns once it accepted the command; the index then builds in the background. Every
/// replica asks at start; all but the first get "already exists".
async fn create_exp_index(client: Arc<Client>, cfg: AerospikeConfig, bound: Duration) {
    let admin = AdminPolicy {
        timeout: u32::try_from(bound.as_millis()).unwrap_or(u32::MAX),
    };
    let (set, index) = (cfg.msg_set(), cfg.exp_index());
    let create = client.create_index_on_bin(
        &admin,
        &cfg.namespace,
        &set,
        BIN_EXP,
        &index,
        IndexType::Numeric,
        CollectionIndexType::Default,
        None,
    );
    let why = match tokio::time::timeout(bound, create).await {
        Ok(Ok(_)) => {
            tracing::info!(%index, "aerospike: created the expiry index");
            return;
        }
        Ok(Err(e)) if e.server_result_code() == Some(ResultCode::IndexFound) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} ms", bound.as_millis()),
    };
    tracing::warn!(
        %index,
        error = %why,
        "aerospike: cannot create the expiry index; the sweep scans the whole set until it exists"
    );
}

/// The Aerospike [`StateStore`]. Cheap to share (`Arc`).
pub struct AerospikeStore {
    inner: Arc<Inner>,
}

impl AerospikeStore {
    /// Connects to the cluster on `rt` (the side runtime) and returns the store. Blocks the
    /// calling thread for at most `connect_timeout_ms`; call it from a thread that is not a
    /// tokio worker (e.g. `main`, a monoio shard, a test). An unreachable cluster fails here
    /// rather than later, so a misconfigured gateway does not start.
    pub fn connect_blocking(
        cfg: AerospikeConfig,
        rt: Handle,
    ) -> Result<Arc<AerospikeStore>, StateError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let wait = Duration::from_millis(cfg.connect_timeout_ms);
        let h = rt.clone();
        drop(h.spawn(async move {
            let r = tokio::time::timeout(wait, Self::connect_inner(cfg, rt))
                .await
                .unwrap_or_else(|_| {
                    Err(StateError::Unavailable(format!(
                        "aerospike: no connection within {} ms",
                        wait.as_millis()
                    )))
                });
            let _ = tx.send(r);
        }));
        rx.recv_timeout(wait + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(StateError::Unavailable(
                    "aerospike: connect task did not answer".into(),
                ))
            })
    }

    async fn connect_inner(
        cfg: AerospikeConfig,
        rt: Handle,
    ) -> Result<Arc<AerospikeStore>, StateError> {
        let mut policy = ClientPolicy::default();
        let t = u32::try_from(cfg.connect_timeout_ms).unwrap_or(u32::MAX);
        policy.timeout = t;
        policy.connect_timeout = t;
        policy.max_conns_per_node = cfg.max_conns_per_node;
        if let Some(user) = &cfg.user {
            let password = std::env::var(&cfg.password_env).map_err(|_| {
                StateError::Unavailable(format!(
                    "aerospike: environment variable {} (state.aerospike.password_env) is not set",
                    cfg.password_env
                ))
            })?;
            policy.auth_mode = AuthMode::Internal(user.clone(), password);
        }
        let client = Client::new(&policy, &cfg.hosts)
            .await
            .map_err(|e| StateError::Unavailable(format!("aerospike connect: {e}")))?;
        // Only a warning: the map may simply not be complete yet; every op on an unknown
        // namespace then fails with `Unavailable` naming it.
        match client.is_strong_consistency(&cfg.namespace) {
            Some(sc) => tracing::info!(
                namespace = %cfg.namespace,
                mode = if sc { "strong consistency" } else { "AP" },
                "aerospike: connected"
            ),
            None => tracing::warn!(
                namespace = %cfg.namespace,
                "aerospike: namespace not in the cluster's partition map (misspelt, or not yet known)"
            ),
        }
        let client = Arc::new(client);
        if cfg.create_exp_index {
            // In the background: the store is usable at once (the sweep falls back to a scan
            // until the index is readable), and a slow or refused index command must not fail
            // or delay the start.
            drop(rt.spawn(create_exp_index(
                Arc::clone(&client),
                cfg.clone(),
                Duration::from_millis(cfg.connect_timeout_ms),
            )));
        }
        let runner = Runner::new(rt, cfg.max_in_flight);
        Ok(Arc::new(AerospikeStore {
            inner: Arc::new(Inner {
                client,
                runner,
                msg_set: cfg.msg_set(),
                rcpt_set: cfg.rcpt_set(),
                cfg,
                cursors: Mutex::new(Cursors::default()),
                instance: fastrand::u64(..),
                exp_index_retry_at_ms: AtomicU64::new(0),
            }),
        }))
    }

    /// Ops started so far and ops in flight now (for metrics and tests).
    pub fn op_stats(&self) -> (u64, usize) {
        let r = &self.inner.runner;
        (r.ops.load(Ordering::Relaxed), r.in_flight())
    }

    /// Runs `op` as a task on the side runtime, bounded in count and time.
    fn spawn<T, F, Fut>(&self, timeout_ms: u64, op: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        // Creating the future does no work (async fns are lazy); the runner polls it.
        self.inner
            .runner
            .run(timeout_ms, op(Arc::clone(&self.inner)))
    }
}

impl Inner {
    fn op_ms(&self) -> u32 {
        u32::try_from(self.cfg.op_timeout_ms).unwrap_or(u32::MAX)
    }

    fn msg_key(&self, key: &MessageKey) -> Result<Key, StateError> {
        Key::new(
            self.cfg.namespace.as_str(),
            self.msg_set.as_str(),
            Value::String(msg_user_key(key)),
        )
        .map_err(|e| StateError::Invalid(format!("aerospike key: {e}")))
    }

    fn rcpt_key(&self, link_id: u32, smsc_id: &str) -> Result<Key, StateError> {
        Key::new(
            self.cfg.namespace.as_str(),
            self.rcpt_set.as_str(),
            Value::String(rcpt_user_key(link_id, smsc_id)),
        )
        .map_err(|e| StateError::Invalid(format!("aerospike key: {e}")))
    }

    fn read_policy(&self) -> ReadPolicy {
        let mut p = ReadPolicy::default();
        p.base_policy.total_timeout = self.op_ms();
        p.base_policy.socket_timeout = self.op_ms();
        p
    }

    /// A write policy; `generation`: only if the record still has this generation.
    fn write_policy(
        &self,
        exists: RecordExistsAction,
        generation: Option<u32>,
        expiration: Expiration,
    ) -> WritePolicy {
        let mut p = WritePolicy::default();
        p.base_policy.total_timeout = self.op_ms();
        p.base_policy.socket_timeout = self.op_ms();
        p.record_exists_action = exists;
        p.expiration = expiration;
        if let Some(g) = generation {
            p.generation_policy = GenerationPolicy::ExpectGenEqual;
            p.generation = g;
        }
        p
    }

    /// The stored message with its generation, live or not; `None` if absent.
    async fn read_msg(&self, key: &MessageKey) -> Result<Option<(MessageRecord, u32)>, StateError> {
        let k = self.msg_key(key)?;
        match self.client.get(&self.read_policy(), &k, Bins::All).await {
            Ok(rec) => Ok(Some((decode_msg(&rec)?, rec.generation))),
            Err(e) => match fail(&e) {
                Fail::NotFound => Ok(None),
                f => Err(unexpected(f, "read")),
            },
        }
    }

    /// Writes `r` over generation `generation`, keeping the record's server TTL.
    async fn write_msg(&self, r: &MessageRecord, generation: u32) -> Result<(), Fail> {
        let k = self.msg_key(&r.key()).map_err(Fail::Store)?;
        let p = self.write_policy(
            RecordExistsAction::ReplaceOnly,
            Some(generation),
            Expiration::DontUpdate,
        );
        self.client
            .put(&p, &k, &msg_bins(r))
            .await
            .map_err(|e| fail(&e))
    }

    /// Writes the receipt index entries: one put for one entry (the usual case: one part per
    /// update), one batch write (a round trip per node, not per entry, and not a connection per
    /// entry) for several.
    async fn write_index(
        &self,
        key: &MessageKey,
        expires_at_ms: u64,
        entries: &[(u32, String, u16)],
    ) -> Result<(), StateError> {
        let expiration = self.cfg.index_ttl(expires_at_ms, unix_ms());
        if let [(link, smsc, part)] = entries {
            let p = self.write_policy(RecordExistsAction::Replace, None, expiration);
            let k = self.rcpt_key(*link, smsc)?;
            return self
                .client
                .put(&p, &k, &rcpt_bins(key, *part, expires_at_ms))
                .await
                .map_err(|e| unexpected(fail(&e), "receipt index write"));
        }
        let row_policy = BatchWritePolicy {
            record_exists_action: RecordExistsAction::Replace,
            expiration,
            ..BatchWritePolicy::default()
        };
        let mut rows = Vec::with_capacity(entries.len());
        for (link, smsc, part) in entries {
            let puts: Vec<Operation> = rcpt_bins(key, *part, expires_at_ms)
                .iter()
                .map(operations::put)
                .collect();
            rows.push(BatchOperation::write(
                &row_policy,
                self.rcpt_key(*link, smsc)?,
                puts,
            ));
        }
        let mut policy = BatchPolicy::write_default();
        policy.base_policy.total_timeout = self.op_ms();
        policy.base_policy.socket_timeout = self.op_ms();
        self.client
            .batch(&policy, &mut rows)
            .await
            .map_err(|e| unexpected(fail(&e), "receipt index batch write"))?;
        // Per-row outcomes are not errors of the call: every row must have been written.
        for row in &rows {
            match row.result_code() {
                Some(ResultCode::Ok) => {}
                other => {
                    return Err(StateError::Unavailable(format!(
                        "aerospike receipt index batch write: a row answered {other:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    async fn create(&self, mut r: MessageRecord) -> Result<CreateOutcome, StateError> {
        let key = r.key();
        let k = self.msg_key(&key)?;
        for _ in 0..self.cfg.write_retries {
            let now = unix_ms();
            r.expires_at_ms = now.saturating_add(self.cfg.ttl_secs.saturating_mul(1000));
            r.status = r.derive_status();
            let index: Vec<(u32, String, u16)> = r
                .parts
                .iter()
                .filter_map(|p| Some((p.link_id?, p.smsc_message_id.clone()?, p.index)))
                .collect();
            if !index.is_empty() {
                self.write_index(&key, r.expires_at_ms, &index).await?;
            }
            let p = self.write_policy(RecordExistsAction::CreateOnly, None, self.cfg.create_ttl());
            match self
                .client
                .put(&p, &k, &msg_bins(&r))
                .await
                .map_err(|e| fail(&e))
            {
                Ok(()) => return Ok(CreateOutcome::Created(r)),
                Err(Fail::Exists) => {}
                Err(f) => return Err(unexpected(f, "create")),
            }
            // Someone holds the key: a live record is the idempotent answer; an expired one
            // (kept by the server for the grace period) is replaced, like the embedded store
            // does, but only if nobody wrote it since we read it.
            let Some((old, generation)) = self.read_msg(&key).await? else {
                continue; // deleted between our write and read: try the create again
            };
            if old.expires_at_ms > unix_ms() {
                return Ok(CreateOutcome::Exists(old));
            }
            let p = self.write_policy(
                RecordExistsAction::ReplaceOnly,
                Some(generation),
                self.cfg.create_ttl(),
            );
            match self
                .client
                .put(&p, &k, &msg_bins(&r))
                .await
                .map_err(|e| fail(&e))
            {
                Ok(()) => return Ok(CreateOutcome::Created(r)),
                Err(Fail::Generation | Fail::NotFound) => {}
                Err(f) => return Err(unexpected(f, "create (replace expired)")),
            }
        }
        Err(contention(self.cfg.write_retries))
    }

    async fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        at_ms: u64,
    ) -> Result<UpdateOutcome, StateError> {
        for _ in 0..self.cfg.write_retries {
            let Some((mut r, generation)) = self.read_msg(&key).await? else {
                return Ok(UpdateOutcome::NotFound);
            };
            if r.expires_at_ms <= unix_ms() {
                return Ok(UpdateOutcome::NotFound);
            }
            let mut index = Vec::new();
            let changed = r.apply_all(&updates, at_ms, |_, part, link_id, smsc_id| {
                index.push((link_id, smsc_id.to_owned(), part));
            });
            if !changed {
                return Ok(UpdateOutcome::Updated { record: r, changed });
            }
            // Index first: see the module docs (a dangling entry is harmless, a missing one
            // would lose the receipt).
            if !index.is_empty() {
                self.write_index(&key, r.expires_at_ms, &index).await?;
            }
            match self.write_msg(&r, generation).await {
                Ok(()) => return Ok(UpdateOutcome::Updated { record: r, changed }),
                Err(Fail::Generation) => {}
                Err(Fail::NotFound) => return Ok(UpdateOutcome::NotFound),
                Err(f) => return Err(unexpected(f, "update")),
            }
        }
        Err(contention(self.cfg.write_retries))
    }

    async fn find(
        &self,
        link_id: u32,
        smsc_id: &str,
    ) -> Result<Option<(MessageKey, u16)>, StateError> {
        if check_smsc_id(smsc_id).is_err() {
            return Ok(None);
        }
        let k = self.rcpt_key(link_id, smsc_id)?;
        match self.client.get(&self.read_policy(), &k, Bins::All).await {
            Ok(rec) => {
                let (key, part, exp) = decode_rcpt(&rec)?;
                Ok((exp > unix_ms()).then_some((key, part)))
            }
            Err(e) => match fail(&e) {
                Fail::NotFound => Ok(None),
                f => Err(unexpected(f, "receipt index read")),
            },
        }
    }

    async fn receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> Result<ReceiptOutcome, StateError> {
        let Some((key, part)) = self.find(link_id, &smsc_id).await? else {
            return Ok(ReceiptOutcome::NotFound);
        };
        for _ in 0..self.cfg.write_retries {
            let Some((mut r, generation)) = self.read_msg(&key).await? else {
                return Ok(ReceiptOutcome::NotFound);
            };
            if r.expires_at_ms <= unix_ms() {
                return Ok(ReceiptOutcome::NotFound);
            }
            // The entry may be dangling (its message write failed) or stale (overwritten by a
            // newer submission): only the part that carries this id takes the receipt.
            let owns = r.parts.get(usize::from(part)).is_some_and(|p| {
                p.link_id == Some(link_id) && p.smsc_message_id.as_deref() == Some(&*smsc_id)
            });
            if !owns {
                return Ok(ReceiptOutcome::NotFound);
            }
            let at = receipt.received_at_ms.max(r.updated_at_ms);
            if !r.apply_receipt(part, &receipt, at) {
                return Ok(ReceiptOutcome::Duplicate);
            }
            match self.write_msg(&r, generation).await {
                Ok(()) => return Ok(ReceiptOutcome::Applied(r)),
                Err(Fail::Generation) => {}
                Err(Fail::NotFound) => return Ok(ReceiptOutcome::NotFound),
                Err(f) => return Err(unexpected(f, "receipt")),
            }
        }
        Err(contention(self.cfg.write_retries))
    }

    fn query_policy(
        &self,
        limit: usize,
        filter: aerospike::expressions::Expression,
    ) -> QueryPolicy {
        let mut p = QueryPolicy::default();
        let t = u32::try_from(self.cfg.scan_timeout_ms).unwrap_or(u32::MAX);
        p.base_policy.total_timeout = t;
        p.base_policy.socket_timeout = t;
        p.base_policy.filter_expression = Some(filter);
        p.max_records = limit as u64;
        // Small pages do not need the default 1024-record buffer.
        p.record_queue_size = limit.clamp(64, 1024);
        p
    }

    /// Runs a scan of the message set (or, with `index`, a secondary-index query); up to
    /// `limit` records as `(record, generation)`, and the partition cursor (`None` when the
    /// scan is complete). Client errors come back raw so the caller can tell index errors.
    async fn scan(
        &self,
        pf: PartitionFilter,
        limit: usize,
        filter: aerospike::expressions::Expression,
        index: Option<Filter>,
    ) -> Result<(Vec<(MessageRecord, u32)>, Option<PartitionFilter>), ScanError> {
        let policy = self.query_policy(limit, filter);
        let mut stmt = Statement::new(
            self.cfg.namespace.as_str(),
            self.msg_set.as_str(),
            Bins::All,
        );
        if let Some(f) = index {
            stmt.set_filter(f);
        }
        let rs = self
            .client
            .query(&policy, pf, stmt)
            .await
            .map_err(ScanError::Client)?;
        let mut stream = rs.into_stream();
        let mut out = Vec::new();
        while out.len() < limit {
            match stream.next().await {
                Some(Ok(rec)) => {
                    let r = decode_msg(&rec).map_err(ScanError::Store)?;
                    out.push((r, rec.generation));
                }
                Some(Err(e)) => return Err(ScanError::Client(e)),
                None => break,
            }
        }
        // Stop the node streams; the cursor reflects the records we took, not those buffered.
        stream.as_ref().close();
        let next = stream.partition_filter().filter(|pf| !pf.done());
        Ok((out, next))
    }

    async fn scan_non_final(
        &self,
        cursor: Option<ScanCursor>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        let limit = limit.clamp(1, super::MAX_PAGE);
        let pf = match cursor {
            None => PartitionFilter::all(),
            Some(ScanCursor(bytes)) => {
                let (inst, id) = parse_cursor(&bytes)
                    .ok_or_else(|| StateError::Invalid("malformed scan cursor".into()))?;
                let taken = (inst == self.instance)
                    .then(|| self.cursors.lock().ok()?.take(id))
                    .flatten();
                taken.ok_or_else(|| {
                    StateError::Invalid(
                        "scan cursor unknown (used twice, too old, or from another store)".into(),
                    )
                })?
            }
        };
        let now = unix_ms();
        let filter = and(vec![
            non_final_filter(),
            gt(int_bin(BIN_EXP), int_val(ms_val(now))),
        ]);
        let (records, next) = self
            .scan(pf, limit, filter, None)
            .await
            .map_err(ScanError::into_state)?;
        let mut page = ScanPage::default();
        for (r, _) in records {
            // Re-checked here: the filter ran on the server's clock view of `now`.
            if !r.status.is_final() && r.expires_at_ms > now {
                page.records.push(r);
            }
        }
        if let Some(pf) = next {
            let id = self
                .cursors
                .lock()
                .map_err(|_| StateError::Unavailable("cursor table poisoned".into()))?
                .put(pf);
            page.next = Some(ScanCursor(cursor_bytes(self.instance, id)));
        }
        Ok(page)
    }

    async fn expire_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StateError> {
        let limit = limit.clamp(1, super::MAX_PAGE);
        let filter = || {
            and(vec![
                non_final_filter(),
                le(int_bin(BIN_EXP), int_val(ms_val(now_ms))),
            ])
        };
        let try_index = unix_ms() >= self.exp_index_retry_at_ms.load(Ordering::Relaxed);
        let indexed = if try_index {
            let range = Filter::range(BIN_EXP, 0i64, ms_val(now_ms));
            match self
                .scan(PartitionFilter::all(), limit, filter(), Some(range))
                .await
            {
                Err(ScanError::Client(e)) if is_index_error(&e) => {
                    // Missing or still building: scan this time, try the index in a minute.
                    tracing::debug!(error = %e, "aerospike: expiry index unusable, scanning");
                    self.exp_index_retry_at_ms
                        .store(unix_ms().saturating_add(60_000), Ordering::Relaxed);
                    None
                }
                other => Some(other),
            }
        } else {
            None
        };
        let scanned = match indexed {
            Some(r) => r,
            None => {
                self.scan(PartitionFilter::all(), limit, filter(), None)
                    .await
            }
        };
        let (due, _) = scanned.map_err(ScanError::into_state)?;
        let mut out = Vec::new();
        let mut first_err = None;
        for chunk in due.chunks(EXPIRE_CONCURRENCY) {
            let writes = chunk.iter().filter_map(|(r, generation)| {
                if r.status.is_final() || r.expires_at_ms > now_ms {
                    return None;
                }
                let mut r = r.clone();
                r.apply(
                    &PartUpdate::AllPending {
                        status: Status::Expired,
                        error_code: None,
                    },
                    now_ms,
                );
                Some(async move {
                    let res = self.write_msg(&r, *generation).await;
                    (r, res)
                })
            });
            for (r, res) in futures::future::join_all(writes).await {
                match res {
                    Ok(()) => out.push(r),
                    // Another replica expired it, or a receipt/update won the race (the next
                    // sweep sees it again if it is still due), or the server dropped it.
                    Err(Fail::Generation | Fail::NotFound) => {}
                    Err(f) => {
                        let e = unexpected(f, "expire");
                        tracing::warn!(error = %e, key = %msg_user_key(&r.key()), "expiry write failed");
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        // Records already turned Expired must be returned (their CDRs depend on it), so an
        // error only surfaces when nothing succeeded.
        match first_err {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

/// A failed scan: the client's error (inspected for index errors) or a record that did not
/// decode.
enum ScanError {
    Client(aerospike::Error),
    Store(StateError),
}

impl ScanError {
    fn into_state(self) -> StateError {
        match self {
            ScanError::Client(e) => unexpected(fail(&e), "scan"),
            ScanError::Store(e) => e,
        }
    }
}

/// The secondary index is missing, still building or otherwise unusable (a scan still works).
fn is_index_error(e: &aerospike::Error) -> bool {
    e.matches(&[
        ResultCode::IndexNotFound,
        ResultCode::IndexNotReadable,
        ResultCode::IndexGeneric,
    ])
}

fn contention(tries: u32) -> StateError {
    StateError::Unavailable(format!(
        "aerospike: record kept changing under us ({tries} generation conflicts)"
    ))
}

fn cursor_bytes(instance: u64, id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&instance.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

fn parse_cursor(b: &[u8]) -> Option<(u64, u64)> {
    let (inst, rest) = b.split_first_chunk::<8>()?;
    let id: [u8; 8] = rest.try_into().ok()?;
    Some((u64::from_be_bytes(*inst), u64::from_be_bytes(id)))
}

impl StateStore for AerospikeStore {
    fn create(&self, record: MessageRecord) -> StoreFuture<CreateOutcome> {
        if let Err(e) = record.validate() {
            return ready(Err(StateError::Invalid(e)));
        }
        let t = self.inner.cfg.op_timeout_ms;
        self.spawn(t, move |i| async move { i.create(record).await })
    }

    fn update(
        &self,
        key: MessageKey,
        updates: Vec<PartUpdate>,
        now_ms: u64,
    ) -> StoreFuture<UpdateOutcome> {
        if let Err(e) = check_update(&key, &updates) {
            return ready(Err(e));
        }
        let t = self.inner.cfg.op_timeout_ms;
        self.spawn(
            t,
            move |i| async move { i.update(key, updates, now_ms).await },
        )
    }

    fn apply_receipt(
        &self,
        link_id: u32,
        smsc_id: String,
        receipt: ReceiptInfo,
    ) -> StoreFuture<ReceiptOutcome> {
        if let Err(e) = check_smsc_id(&smsc_id) {
            return ready(Err(e));
        }
        let t = self.inner.cfg.op_timeout_ms;
        self.spawn(t, move |i| async move {
            i.receipt(link_id, smsc_id, receipt).await
        })
    }

    fn get(&self, key: MessageKey) -> StoreFuture<Option<MessageRecord>> {
        if check_txid(&key.transaction_id).is_err() {
            // Such a key can never have been stored.
            return ready(Ok(None));
        }
        let t = self.inner.cfg.op_timeout_ms;
        self.spawn(t, move |i| async move {
            let now = unix_ms();
            Ok(i.read_msg(&key)
                .await?
                .map(|(r, _)| r)
                .filter(|r| r.expires_at_ms > now))
        })
    }

    fn find_by_smsc_id(
        &self,
        link_id: u32,
        smsc_id: String,
    ) -> StoreFuture<Option<(MessageKey, u16)>> {
        let t = self.inner.cfg.op_timeout_ms;
        self.spawn(t, move |i| async move { i.find(link_id, &smsc_id).await })
    }

    fn scan_non_final(&self, cursor: Option<ScanCursor>, limit: usize) -> StoreFuture<ScanPage> {
        let t = self.inner.cfg.scan_timeout_ms;
        self.spawn(
            t,
            move |i| async move { i.scan_non_final(cursor, limit).await },
        )
    }

    fn expire_due(&self, now_ms: u64, limit: usize) -> StoreFuture<Vec<MessageRecord>> {
        let t = self.inner.cfg.scan_timeout_ms;
        self.spawn(t, move |i| async move { i.expire_due(now_ms, limit).await })
    }

    fn flush(&self) -> StoreFuture<()> {
        // Every write is acknowledged by the cluster (master and replicas, COMMIT_ALL) before
        // its future resolves, so "durable" = "no op still in flight".
        self.inner.runner.flush(self.inner.cfg.op_timeout_ms)
    }

    fn is_available(&self) -> bool {
        self.inner.runner.healthy.load(Ordering::Relaxed) && self.inner.client.is_connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Encoding, PartUpdate};

    fn sample() -> MessageRecord {
        let mut r = MessageRecord::new_accepted(
            MessageKey::new(u64::MAX, "tx:with:colons-ü"),
            3,
            "Sender",
            "+4512345678",
            Encoding::Gsm7,
            "hello",
            2,
            1_700_000_000_000,
        );
        r.expires_at_ms = 1_700_086_400_000;
        r.apply(
            &PartUpdate::Submitted {
                index: 0,
                link_id: 9,
                smsc_message_id: "abc".into(),
            },
            1_700_000_000_100,
        );
        r
    }

    fn record_of(bins: Vec<Bin>) -> Record {
        let map = bins.into_iter().map(|b| (b.name, b.value)).collect();
        Record::new(None, map, None, 1, 0)
    }

    #[test]
    fn keys_are_unambiguous() {
        let k = MessageKey::new(42, "a:b");
        assert_eq!(msg_user_key(&k), "42:a:b");
        // The app id never contains ':', so the first ':' splits key and id.
        assert_ne!(
            msg_user_key(&MessageKey::new(4, "2:a:b")),
            msg_user_key(&MessageKey::new(42, ":a:b"))
        );
        assert_eq!(rcpt_user_key(7, "0A1B"), "7:0A1B");
        assert_ne!(rcpt_user_key(1, "23:x"), rcpt_user_key(12, "3:x"));
    }

    #[test]
    fn message_bins_round_trip() {
        let r = sample();
        let bins = msg_bins(&r);
        assert!(bins.iter().all(|b| b.name.len() <= 15), "bin name limit");
        let rec = record_of(bins);
        assert_eq!(decode_msg(&rec).unwrap(), r);
        assert!(
            matches!(rec.bins.get(BIN_STATUS), Some(Value::Int(c)) if *c == i64::from(r.status.code()))
        );
        assert!(matches!(rec.bins.get(BIN_EXP), Some(Value::Int(e)) if *e == 1_700_086_400_000));
    }

    #[test]
    fn receipt_bins_round_trip() {
        let k = MessageKey::new(u64::MAX - 1, "t");
        let rec = record_of(rcpt_bins(&k, 254, 123_456));
        assert_eq!(decode_rcpt(&rec).unwrap(), (k, 254, 123_456));
    }

    #[test]
    fn bad_bins_are_corrupt_not_panics() {
        let r = sample();
        let mut bins = msg_bins(&r);
        bins.retain(|b| b.name != BIN_REC);
        assert!(matches!(
            decode_msg(&record_of(bins)),
            Err(StateError::Corrupt(_))
        ));
        let mut bins = msg_bins(&r);
        bins[0].value = Value::String("x".into());
        assert!(matches!(
            decode_msg(&record_of(bins)),
            Err(StateError::Corrupt(_))
        ));
        let mut bins = msg_bins(&r);
        bins[2].value = Value::Blob(vec![1, 2, 3]);
        assert!(matches!(
            decode_msg(&record_of(bins)),
            Err(StateError::Corrupt(_))
        ));
        let k = MessageKey::new(1, "t");
        let mut bins = rcpt_bins(&k, 1, 5);
        bins[2].value = Value::Int(70_000);
        assert!(matches!(
            decode_rcpt(&record_of(bins)),
            Err(StateError::Corrupt(_))
        ));
        let mut bins = rcpt_bins(&k, 1, 5);
        bins[3].value = Value::Int(-1);
        assert!(matches!(
            decode_rcpt(&record_of(bins)),
            Err(StateError::Corrupt(_))
        ));
    }

    #[test]
    fn error_mapping() {
        let m = || "msg".to_string();
        assert_eq!(
            classify(Some(ResultCode::KeyNotFoundError), m),
            Fail::NotFound
        );
        assert_eq!(classify(Some(ResultCode::KeyExistsError), m), Fail::Exists);
        assert_eq!(
            classify(Some(ResultCode::GenerationError), m),
            Fail::Generation
        );
        assert_eq!(
            classify(Some(ResultCode::DeviceOverload), m),
            Fail::Store(StateError::Overloaded)
        );
        assert_eq!(
            classify(Some(ResultCode::KeyBusy), m),
            Fail::Store(StateError::Overloaded)
        );
        for rc in [
            ResultCode::Timeout,
            ResultCode::PartitionUnavailable,
            ResultCode::FailForbidden,
            ResultCode::RecordTooBig,
        ] {
            match classify(Some(rc), m) {
                Fail::Store(StateError::Unavailable(s)) => assert!(s.contains("msg")),
                other => panic!("{rc:?} -> {other:?}"),
            }
        }
        // Client-side failures (timeouts, refused connections) carry no server code.
        assert!(matches!(
            classify(None, m),
            Fail::Store(StateError::Unavailable(_))
        ));
        // Every store-side failure is a 503, never a 422.
        assert!(unexpected(Fail::Exists, "x").is_unavailable());
        assert!(unexpected(classify(None, m), "x").is_unavailable());
    }

    #[test]
    fn ttl_computation() {
        let c = AerospikeConfig {
            ttl_secs: 86_400,
            ttl_grace_secs: 3600,
            ..AerospikeConfig::default()
        };
        assert_eq!(c.create_ttl(), Expiration::Seconds(90_000));
        // An index entry ends with its message: remaining life + grace, rounded up.
        assert_eq!(
            c.index_ttl(10_000_500, 10_000_000),
            Expiration::Seconds(3601)
        );
        assert_eq!(
            c.index_ttl(10_000_000, 10_000_000),
            Expiration::Seconds(3600)
        );
        // Past even the grace: never 0 (= namespace default), at least 1 s.
        assert_eq!(c.index_ttl(0, u64::MAX), Expiration::Seconds(1));
        // Huge values stay below the special "never"/"don't update" codes.
        assert_eq!(clamp_ttl(u64::MAX), u32::MAX - 2);
        assert_eq!(clamp_ttl(0), 1);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = AerospikeConfig::default();
        assert_eq!(c.msg_set(), "smsgw_msg");
        assert_eq!(c.rcpt_set(), "smsgw_rcpt");
        assert_eq!(c.exp_index(), "smsgw_msg_exp");
        // The longest prefix still gives an index name within the server's 63 bytes.
        let long = AerospikeFile {
            set_prefix: "p".repeat(55),
            ..AerospikeFile::default()
        }
        .validate(60)
        .unwrap();
        assert!(long.exp_index().len() <= 63);
        assert_eq!(c.namespace, "test");
        assert_eq!(c.user, None);

        let bad = AerospikeFile {
            hosts: "127.0.0.1:3000, nohost".into(),
            namespace: "bad ns".into(),
            set_prefix: "x".repeat(60),
            user: "admin".into(),
            password_env: " ".into(),
            ttl_grace_s: 1,
            op_timeout_ms: 0,
            scan_timeout_ms: 1,
            connect_timeout_ms: 1,
            max_in_flight: 0,
            max_conns_per_node: 0,
            write_retries: 0,
            create_exp_index: true,
        };
        let problems = bad.validate(0).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        for k in [
            "hosts",
            "namespace",
            "set_prefix",
            "password_env",
            "ttl_grace_s",
            "op_timeout_ms",
            "scan_timeout_ms",
            "connect_timeout_ms",
            "max_in_flight",
            "max_conns_per_node",
            "write_retries",
            "ttl_s",
        ] {
            assert!(keys.contains(&k), "{k} not reported: {problems:?}");
        }
        assert!(
            problems
                .iter()
                .any(|(k, why)| *k == "hosts" && why.contains("nohost"))
        );
        let ok = AerospikeFile {
            hosts: "a.example:3000,10.0.0.1:3100".into(),
            user: "u".into(),
            password_env: "AS_PASSWORD".into(),
            ..AerospikeFile::default()
        }
        .validate(60)
        .unwrap();
        assert_eq!(ok.user.as_deref(), Some("u"));
        assert_eq!(ok.ttl_secs, 60);
    }

    #[test]
    fn cursors_are_bounded_and_single_use() {
        assert_eq!(parse_cursor(&cursor_bytes(5, 9)), Some((5, 9)));
        assert_eq!(parse_cursor(&[1, 2, 3]), None);
        let mut c = Cursors::default();
        let first = c.put(PartitionFilter::all());
        for _ in 0..MAX_CURSORS {
            c.put(PartitionFilter::all());
        }
        assert_eq!(c.map.len(), MAX_CURSORS);
        assert!(c.take(first).is_none(), "oldest evicted");
        let last = c.next_id;
        assert!(c.take(last).is_some());
        assert!(c.take(last).is_none(), "single use");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Awaits on a thread with no tokio context (like a monoio shard), bounded so that a
    /// future that never resolves fails the test instead of hanging it.
    fn await_bounded<T: Send + 'static>(
        f: StoreFuture<T>,
        bound: Duration,
    ) -> Result<T, StateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(futures::executor::block_on(f));
        });
        rx.recv_timeout(bound)
            .expect("store future did not resolve in time")
    }

    async fn sleeper(ms: u64) -> Result<u64, StateError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }

    #[test]
    fn runner_refuses_beyond_max_in_flight_and_gives_permits_back() {
        let rt = runtime();
        let r = Runner::new(rt.handle().clone(), 2);
        let a = r.run(5_000, sleeper(300));
        let b = r.run(5_000, sleeper(300));
        assert_eq!(r.in_flight(), 2);
        // The third is refused at once, without waiting for a permit.
        let t = std::time::Instant::now();
        let c = await_bounded(r.run(5_000, sleeper(1)), Duration::from_secs(1));
        assert_eq!(c, Err(StateError::Overloaded));
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(await_bounded(a, Duration::from_secs(5)), Ok(300));
        assert_eq!(await_bounded(b, Duration::from_secs(5)), Ok(300));
        assert_eq!(r.in_flight(), 0, "permits back once the answers are out");
        assert_eq!(
            await_bounded(r.run(5_000, sleeper(1)), Duration::from_secs(5)),
            Ok(1)
        );
        assert_eq!(
            r.ops.load(Ordering::Relaxed),
            3,
            "refused ops are not counted as run"
        );
    }

    #[test]
    fn runner_times_out_a_stuck_op_and_marks_the_store_down() {
        let rt = runtime();
        let r = Runner::new(rt.handle().clone(), 4);
        let t = std::time::Instant::now();
        let res = await_bounded(r.run(100, sleeper(60_000)), Duration::from_secs(5));
        assert!(
            matches!(&res, Err(StateError::Unavailable(m)) if m.contains("timed out")),
            "{res:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!r.healthy.load(Ordering::Relaxed));
        assert_eq!(r.in_flight(), 0, "a timed-out op frees its permit");
        // A success marks it up again; a request error (Invalid) does not count as down.
        assert_eq!(
            await_bounded(r.run(1_000, sleeper(1)), Duration::from_secs(5)),
            Ok(1)
        );
        assert!(r.healthy.load(Ordering::Relaxed));
        let invalid = r.run(1_000, async {
            Err::<(), _>(StateError::Invalid("x".into()))
        });
        assert!(matches!(
            await_bounded(invalid, Duration::from_secs(5)),
            Err(StateError::Invalid(_))
        ));
        assert!(r.healthy.load(Ordering::Relaxed));
    }

    #[test]
    fn runner_answers_unavailable_when_its_runtime_is_gone() {
        let rt = runtime();
        let r = Runner::new(rt.handle().clone(), 4);
        // In flight when the runtime goes: dropped with it, answered, not hung.
        let pending = r.run(60_000, sleeper(60_000));
        rt.shutdown_background();
        let res = await_bounded(pending, Duration::from_secs(5));
        assert!(matches!(res, Err(StateError::Unavailable(_))), "{res:?}");
        // Started after: the spawn is refused by the dead runtime, answered the same way.
        let res = await_bounded(r.run(1_000, sleeper(1)), Duration::from_secs(5));
        assert!(matches!(res, Err(StateError::Unavailable(_))), "{res:?}");
        let res = await_bounded(r.flush(1_000), Duration::from_secs(5));
        assert!(matches!(res, Err(StateError::Unavailable(_))), "{res:?}");
    }

    #[test]
    fn flush_waits_for_ops_in_flight_within_its_bound() {
        let rt = runtime();
        let r = Runner::new(rt.handle().clone(), 8);
        let op = r.run(5_000, sleeper(300));
        let t = std::time::Instant::now();
        assert_eq!(
            await_bounded(r.flush(5_000), Duration::from_secs(5)),
            Ok(())
        );
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(await_bounded(op, Duration::from_secs(5)), Ok(300));
        // An op that outlives the bound: flush gives up with Unavailable instead of waiting.
        let _stuck = r.run(60_000, sleeper(60_000));
        let res = await_bounded(r.flush(100), Duration::from_secs(5));
        assert!(matches!(res, Err(StateError::Unavailable(_))), "{res:?}");
    }

    #[test]
    fn ops_fail_fast_without_a_cluster() {
        // Port 1 on loopback: nothing listens, so connecting fails within the bound.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = AerospikeConfig {
            hosts: "127.0.0.1:1".into(),
            connect_timeout_ms: 500,
            ..AerospikeConfig::default()
        };
        let t = std::time::Instant::now();
        let r = AerospikeStore::connect_blocking(cfg, rt.handle().clone());
        assert!(
            matches!(r, Err(StateError::Unavailable(_))),
            "{:?}",
            r.err()
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
