//! CP1/CP2 counters in Redis: one Lua script checks and counts atomically, so replicas never
//! both admit the last message under a cap.
//!
//! Keys (all with the destination as Redis Cluster hash tag, so one script touches one slot):
//! * `<prefix>:mcp:{<e164>}:d:<day>`  — CP1 count of the local day, TTL = rest of the day + 1 h
//! * `<prefix>:mcp:{<e164>}:w:<week>` — CP1 count of the ISO week, TTL = rest of the week + 1 h
//! * `<prefix>:mcp:{<e164>}:dup:<app>:<text hash hex>` — CP2 marker, TTL = the window

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{info, warn};

use super::engine::{CheckRequest, PolicyError, periods};
use super::{PolicySettings, State};

/// KEYS: dup, day, week. ARGV: cp2 (0/1), window ms, cp1 (0/1), daily cap, weekly cap
/// (0 = none), day TTL ms, week TTL ms, now ms (the gateway's clock). Returns the state name.
/// The CP2 marker holds its expiry time on the gateway's clock, so the window is exact on the
/// same clock the caps use (and testable); its Redis TTL only removes it afterwards.
pub const CHECK_SCRIPT: &str = r#"
local cp2 = ARGV[1] == '1'
local cp1 = ARGV[3] == '1'
local dcap = tonumber(ARGV[4])
local wcap = tonumber(ARGV[5])
local now = tonumber(ARGV[8])
if cp2 then
  local exp = redis.call('GET', KEYS[1])
  if exp and tonumber(exp) > now then return 'duplicate' end
end
if cp1 then
  if dcap > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= dcap then return 'daily_cp' end
  if wcap > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= wcap then return 'weekly_cp' end
end
if cp2 then redis.call('SET', KEYS[1], tostring(now + tonumber(ARGV[2])), 'PX', ARGV[2]) end
if cp1 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
return 'ok'
"#;

/// Kept past the end of a period so a replica with a slightly slow clock still finds it.
const PERIOD_SLACK_MS: i64 = 3_600_000;

/// The Redis side: a connection manager on the tokio side runtime, connected in the
/// background (the gateway starts even while Redis is down).
pub struct RedisStore {
    conn: Arc<RwLock<Option<redis::aio::ConnectionManager>>>,
    script: Arc<redis::Script>,
    runtime: tokio::runtime::Handle,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// Starts connecting on `runtime`; retries with back-off until it succeeds.
    pub fn start(
        url: &str,
        prefix: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<RedisStore, PolicyError> {
        let client =
            redis::Client::open(url).map_err(|e| PolicyError::Unavailable(e.to_string()))?;
        let conn = Arc::new(RwLock::new(None));
        let slot = Arc::clone(&conn);
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let fut = redis::aio::ConnectionManager::new_with_config(client.clone(), cfg);
                match tokio::time::timeout(timeout.max(Duration::from_millis(500)), fut).await {
                    Ok(Ok(c)) => {
                        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
                        info!("policy: redis connected");
                        return;
                    }
                    Ok(Err(e)) => warn!(error = %e, "policy: redis connect failed; retrying"),
                    Err(_) => warn!("policy: redis connect timed out; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Ok(RedisStore {
            conn,
            script: Arc::new(redis::Script::new(CHECK_SCRIPT)),
            runtime,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    /// Key names for one request (documented in docs/limits-and-policy.md).
    pub fn keys(&self, req: &CheckRequest, day: i64, week: i64) -> [String; 3] {
        let base = format!("{}:mcp:{{+{}}}", self.prefix, req.destination);
        [
            format!("{base}:dup:{}:{:016x}", req.app_id, req.text_hash),
            format!("{base}:d:{day}"),
            format!("{base}:w:{week}"),
        ]
    }

    /// One round trip on the side runtime; the returned future can be awaited from any
    /// executor (a tokio `JoinHandle` wakes whatever waker polled it).
    pub async fn check(
        &self,
        req: &CheckRequest,
        s: &PolicySettings,
        now_ms: i64,
    ) -> Result<State, PolicyError> {
        let Some(mut conn) = self.conn.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Err(PolicyError::Unavailable("not connected".into()));
        };
        let p = periods(now_ms, s.utc_offset_s);
        let [dup, day, week] = self.keys(req, p.day, p.week);
        let script = Arc::clone(&self.script);
        let args = [
            u64::from(req.strategies.cp2).to_string(),
            (s.cp2_window.as_millis() as u64).max(1).to_string(),
            u64::from(req.strategies.cp1).to_string(),
            s.daily_cap.to_string(),
            s.weekly_cap.to_string(),
            (p.day_left_ms + PERIOD_SLACK_MS).to_string(),
            (p.week_left_ms + PERIOD_SLACK_MS).to_string(),
            now_ms.to_string(),
        ];
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let mut inv = script.key(dup);
            inv.key(day).key(week);
            for a in &args {
                inv.arg(a);
            }
            match tokio::time::timeout(timeout, inv.invoke_async::<String>(&mut conn)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(PolicyError::Unavailable(e.to_string())),
                Err(_) => Err(PolicyError::Unavailable(format!(
                    "no answer within {timeout:?}"
                ))),
            }
        });
        let answer = task
            .await
            .map_err(|e| PolicyError::Unavailable(e.to_string()))??;
        State::parse(&answer)
            .ok_or_else(|| PolicyError::Unavailable(format!("unexpected answer {answer:?}")))
    }

    /// Whether a connection exists (it may still fail per call).
    pub fn connected(&self) -> bool {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}
