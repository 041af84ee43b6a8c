//! The shared auth service (control plane) and the per-shard auth stage (data plane).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::apps::{App, Apps};
use super::config::{ADMIN_KEY_ENV, JWT_SECRET_ENV, SecurityConfig};
use super::token::{self, KeyError, ServerKey};
use crate::api::{ApiError, ErrorKind};
use crate::route::Target;
use crate::shard::stages::{Admission, RequestMeta, Stage, Verdict};

/// Client IPs tracked by the failed-login limiter; when full, the table starts over (an
/// attacker with more addresses than this gains at most one extra window).
const LOGIN_TRACKED_IPS: usize = 10_000;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Logins verified at once (each one a short-lived thread doing one argon2 check).
const MAX_LOGIN_THREADS: usize = 4;

/// Reads the HS256 server key: `SMSGW_JWT_SECRET` first, then `security.jwt_secret_file`.
/// Surrounding whitespace (a trailing newline from `echo`) is not part of the key.
pub fn load_server_key(
    cfg: &SecurityConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerKey, KeyError> {
    if let Some(v) = env(JWT_SECRET_ENV).filter(|v| !v.trim().is_empty()) {
        return ServerKey::new(v.trim().as_bytes());
    }
    let Some(path) = &cfg.jwt_key_file else {
        return Err(KeyError::Missing {
            env: JWT_SECRET_ENV,
        });
    };
    let bytes = std::fs::read(path).map_err(|e| KeyError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    ServerKey::new(bytes.trim_ascii())
}

/// An argon2id PHC string for `secret` (for the apps file's `secret_hash`).
pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters and a fresh salt")
        .to_string()
}

/// An answer of `POST /api/v1/user/login`.
#[derive(Debug, Serialize)]
pub struct LoginAnswer {
    pub token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub app_id: u64,
}

/// One app as `GET /api/v1/admin/apps` shows it: never the secret hash nor key material.
#[derive(Debug, Serialize)]
pub struct AppView {
    pub app_id: u64,
    pub name: String,
    pub enabled: bool,
    pub has_secret: bool,
    pub key_ids: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub allowed_esmes: Vec<u32>,
    pub default_strategy: Option<String>,
}

/// Shared by every shard. Reads are one `RwLock` read of an `Arc` (never held across an await).
pub struct AuthService {
    pub config: SecurityConfig,
    server_key: ServerKey,
    apps: RwLock<Arc<Apps>>,
    /// Bumped on every successful reload; cached verifications of older generations are void.
    generation: AtomicU64,
    apps_mtime: Mutex<Option<SystemTime>>,
    admin_key: Option<String>,
    login_failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    logins_in_flight: std::sync::atomic::AtomicUsize,
    /// A PHC hash verified when the app is unknown, so that a login for a missing app costs
    /// the same time as one with a wrong secret.
    dummy_hash: String,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("enabled", &self.config.enabled)
            .field("apps", &self.apps().len())
            .field("admin_enabled", &self.admin_key.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("invalid apps file {path}:\n  {}", .errors.join("\n  "))]
    Apps { path: String, errors: Vec<String> },
}

impl AuthService {
    /// Reads the server key, the admin key and the apps file. With `enabled = false` nothing
    /// is required (a random server key is used; no token it mints is ever seen).
    pub fn start(
        config: SecurityConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AuthService, StartError> {
        let (server_key, apps) = if config.enabled {
            let key = load_server_key(&config, env)?;
            let apps = Apps::load(&config.apps_file).map_err(|errors| StartError::Apps {
                path: config.apps_file.display().to_string(),
                errors,
            })?;
            (key, apps)
        } else {
            let random: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
            (ServerKey::new(&random)?, Apps::default())
        };
        let mtime = mtime(&config.apps_file);
        Ok(AuthService {
            admin_key: env(ADMIN_KEY_ENV).filter(|k| !k.is_empty()),
            server_key,
            apps: RwLock::new(Arc::new(apps)),
            generation: AtomicU64::new(1),
            apps_mtime: Mutex::new(mtime),
            login_failures: Mutex::new(HashMap::new()),
            logins_in_flight: std::sync::atomic::AtomicUsize::new(0),
            dummy_hash: hash_secret("smsgw-timing-equaliser"),
            config,
        })
    }

    pub fn apps(&self) -> Arc<Apps> {
        Arc::clone(&self.apps.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn server_key(&self) -> &ServerKey {
        &self.server_key
    }

    /// Re-reads the apps file. On any error the current snapshot stays and the errors are
    /// returned (and logged). Returns the number of apps loaded.
    pub fn reload(&self) -> Result<usize, Vec<String>> {
        let mtime = mtime(&self.config.apps_file);
        let result = Apps::load(&self.config.apps_file);
        // Remember the mtime even for a broken file: it is not retried until it changes again.
        *self.apps_mtime.lock().unwrap_or_else(|p| p.into_inner()) = mtime;
        match result {
            Ok(apps) => {
                let n = apps.len();
                *self.apps.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(apps);
                self.generation.fetch_add(1, Ordering::AcqRel);
                info!(apps = n, file = %self.config.apps_file.display(), "apps reloaded");
                Ok(n)
            }
            Err(errors) => {
                for e in &errors {
                    warn!(file = %self.config.apps_file.display(), "apps file refused, previous apps kept: {e}");
                }
                Err(errors)
            }
        }
    }

    /// Reloads when the apps file's mtime changed since the last load (the control-plane poll).
    pub fn reload_if_changed(&self) {
        let now = mtime(&self.config.apps_file);
        let last = *self.apps_mtime.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && now != last {
            let _ = self.reload();
        }
    }

    /// Starts the mtime poll on its own thread (control plane; a few syscalls per interval).
    pub fn spawn_poller(self: &Arc<Self>, shutdown: crate::runtime::Shutdown) {
        let (Some(interval), true) = (self.config.apps_poll_interval, self.config.enabled) else {
            return;
        };
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("apps-reload".into())
            .spawn(move || {
                while !shutdown.is_triggered() {
                    std::thread::sleep(interval);
                    me.reload_if_changed();
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the apps file poller; reload with POST /api/v1/admin/reload");
        }
    }

    /// `X-Admin-Key` against `ADMIN_API_KEY`, in constant time.
    pub fn check_admin(&self, presented: Option<&str>) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_key else {
            return Err(ApiError::new(
                ErrorKind::AdminDisabled,
                "admin API disabled: ADMIN_API_KEY is not set",
            ));
        };
        let presented = presented.unwrap_or("");
        // `ct_eq` on slices of different lengths returns false without comparing contents;
        // the length of the key is not a secret worth hiding.
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::InvalidAdminKey,
                "invalid admin key",
            ))
        }
    }

    pub fn app_views(&self) -> Vec<AppView> {
        self.apps()
            .iter()
            .map(|a| AppView {
                app_id: a.id,
                name: a.name.clone(),
                enabled: a.enabled,
                has_secret: a.secret_hash().is_some(),
                key_ids: a.keys.iter().map(|k| k.kid.clone()).collect(),
                allowed_cidrs: a.allowed_cidrs.iter().map(|c| c.to_string()).collect(),
                allowed_esmes: a.allowed_esmes.clone(),
                default_strategy: a.default_strategy.clone(),
            })
            .collect()
    }

    /// Mints a token for an existing, enabled app (for `smsgw token`).
    pub fn mint(&self, app_id: u64) -> Result<String, ApiError> {
        let apps = self.apps();
        let app = apps
            .get(app_id)
            .ok_or_else(|| ApiError::new(ErrorKind::UnknownApp, "unknown app_id"))?;
        if !app.enabled {
            return Err(ApiError::new(ErrorKind::AppDisabled, "app is disabled"));
        }
        Ok(token::mint(
            &self.server_key,
            &self.config.issuer,
            app_id,
            self.config.token_ttl,
            token::unix_now(),
        ))
    }

    /// `login` off the calling thread: the argon2 check costs ~10-50 ms of CPU by design, which
    /// must not stall a shard's event loop. At most `MAX_LOGIN_THREADS` run at once; beyond
    /// that the answer is 503 `overloaded` with `Retry-After: 1`.
    pub async fn login_offloaded(
        self: &Arc<Self>,
        app_id: u64,
        secret: String,
        client: IpAddr,
    ) -> Result<LoginAnswer, ApiError> {
        // Cheap refusals first, on the caller's thread.
        self.check_login_budget(client)?;
        let overloaded =
            || ApiError::new(ErrorKind::Overloaded, "too many logins in progress").retry_after(1);
        if self.logins_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_LOGIN_THREADS {
            self.logins_in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        let (tx, rx) = async_channel::bounded(1);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("login".into())
            .spawn(move || {
                let answer = me.login(app_id, &secret, client);
                me.logins_in_flight.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.try_send(answer);
            });
        if spawned.is_err() {
            self.logins_in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        rx.recv()
            .await
            .unwrap_or_else(|_| Err(ApiError::new(ErrorKind::Internal, "login thread failed")))
    }

    /// `POST /api/v1/user/login`, on the calling thread (see `login_offloaded`). Failed
    /// attempts are limited per client IP so that the argon2 cost cannot be used to guess
    /// secrets fast, nor to burn the gateway's CPU.
    pub fn login(
        &self,
        app_id: u64,
        secret: &str,
        client: IpAddr,
    ) -> Result<LoginAnswer, ApiError> {
        if !self.config.enabled {
            return Err(ApiError::new(
                ErrorKind::AdminDisabled,
                "authentication is disabled on this gateway",
            ));
        }
        self.check_login_budget(client)?;
        let apps = self.apps();
        let app = apps.get(app_id);
        let hash = app.and_then(App::secret_hash).unwrap_or(&self.dummy_hash);
        let verified = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let ok = verified && app.is_some_and(|a| a.secret_hash().is_some());
        let Some(app) = app.filter(|_| ok) else {
            self.record_login_failure(client);
            return Err(ApiError::new(
                ErrorKind::InvalidCredentials,
                "invalid app_id or secret",
            ));
        };
        if !app.enabled {
            return Err(ApiError::new(ErrorKind::AppDisabled, "app is disabled"));
        }
        if !app.allows_ip(client) {
            return Err(ApiError::new(
                ErrorKind::IpNotAllowed,
                "client IP is not allowed for this app",
            ));
        }
        Ok(LoginAnswer {
            token: token::mint(
                &self.server_key,
                &self.config.issuer,
                app.id,
                self.config.token_ttl,
                token::unix_now(),
            ),
            token_type: "Bearer",
            expires_in: self.config.token_ttl.as_secs(),
            app_id: app.id,
        })
    }

    fn check_login_budget(&self, client: IpAddr) -> Result<(), ApiError> {
        let map = self
            .login_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(&(n, since)) = map.get(&client)
            && n >= self.config.login_failures_per_min
            && since.elapsed() < LOGIN_WINDOW
        {
            let wait = LOGIN_WINDOW
                .saturating_sub(since.elapsed())
                .as_secs()
                .max(1);
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                "too many failed logins from this address",
            )
            .retry_after(wait as u32));
        }
        Ok(())
    }

    fn record_login_failure(&self, client: IpAddr) {
        let mut map = self
            .login_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= LOGIN_TRACKED_IPS && !map.contains_key(&client) {
            map.retain(|_, (_, since)| since.elapsed() < LOGIN_WINDOW);
            if map.len() >= LOGIN_TRACKED_IPS {
                map.clear();
            }
        }
        let e = map.entry(client).or_insert((0, Instant::now()));
        if e.1.elapsed() >= LOGIN_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

struct CachedToken {
    app_id: u64,
    exp: u64,
    generation: u64,
}

/// The per-shard auth stage: header checks, token verification (cached), app and IP checks,
/// and for a send the esme checks (app's allowed esmes, the link whitelists).
pub struct AuthStage {
    service: Arc<AuthService>,
    rules: Arc<crate::route::Registry>,
    /// Verified tokens of this shard: token text → app and expiry. Bounded by
    /// `token_cache_entries`; cleared when full (cheap, and a miss only costs one verify).
    cache: RefCell<HashMap<Box<str>, CachedToken>>,
}

impl AuthStage {
    pub fn new(service: Arc<AuthService>, rules: Arc<crate::route::Registry>) -> AuthStage {
        AuthStage {
            service,
            rules,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Runs every check; `esme` 0 = no target (status lookups, link listings).
    pub fn check_request(&self, meta: &RequestMeta<'_>, esme: u32) -> Result<AppInfo, ApiError> {
        let header = meta.header;
        let auth = header("authorization")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::MissingAuthorization,
                    "authorization header required",
                )
            })?;
        let token = bearer(auth).ok_or_else(|| {
            ApiError::new(
                ErrorKind::MissingAuthorization,
                "authorization header required",
            )
        })?;
        let app_text = header("x-app-id")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::new(ErrorKind::MissingAppId, "X-App-ID header required"))?;
        let app_id = app_text
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| ApiError::new(ErrorKind::InvalidAppId, "invalid X-App-ID"))?;
        let apps = self.service.apps();
        let app = apps
            .get(app_id)
            .ok_or_else(|| ApiError::new(ErrorKind::UnknownApp, "unknown app_id"))?;
        let token_app = self.verify_cached(token, app)?;
        if token_app != app_id {
            return Err(ApiError::new(
                ErrorKind::AppIdMismatch,
                "X-App-ID does not match the token",
            ));
        }
        if !app.enabled {
            return Err(ApiError::new(ErrorKind::AppDisabled, "app is disabled"));
        }
        if !app.allows_ip(meta.client_ip) {
            return Err(ApiError::new(
                ErrorKind::IpNotAllowed,
                "client IP is not allowed for this app",
            ));
        }
        if esme != 0 {
            if !app.allows_esme(esme) {
                return Err(ApiError::new(
                    ErrorKind::EsmeNotAllowed,
                    "this app may not send through this esme",
                ));
            }
            if !self.whitelisted(esme, meta.client_ip) {
                return Err(ApiError::new(
                    ErrorKind::IpNotAllowed,
                    "client IP is not in the link's whitelist",
                ));
            }
        }
        Ok(AppInfo {
            app_id,
            default_strategy: app.default_strategy.clone(),
        })
    }

    /// A pool is allowed only when every enabled member's whitelist allows the client: any of
    /// them may be picked, and a whitelist is the operator's promise to that SMSC.
    fn whitelisted(&self, esme: u32, ip: IpAddr) -> bool {
        match self.rules.resolve(u64::from(esme)) {
            Ok(Target::Link(l)) => self.rules.link(l).is_none_or(|l| l.allows(ip)),
            Ok(Target::Pool(p)) => self.rules.pool(p).is_none_or(|pool| {
                pool.members.iter().all(|m| {
                    self.rules
                        .link(m.link)
                        .is_none_or(|l| !l.enabled || l.allows(ip))
                })
            }),
            // Unknown esme: the pipeline answers 404 after the stages.
            Err(_) => true,
        }
    }

    fn verify_cached(&self, token: &str, app: &App) -> Result<u64, ApiError> {
        let invalid = || ApiError::new(ErrorKind::InvalidToken, "invalid or expired token");
        let now = token::unix_now();
        let generation = self.service.generation();
        let leeway = self.service.config.leeway.as_secs();
        let cap = self.service.config.token_cache_entries;
        if cap > 0
            && let Some(c) = self.cache.borrow().get(token)
            && c.generation == generation
        {
            return if now <= c.exp + leeway {
                Ok(c.app_id)
            } else {
                Err(invalid())
            };
        }
        let claims = token::verify(
            token,
            &self.service.server_key,
            &self.service.config.issuer,
            app,
            self.service.config.leeway,
        )
        .map_err(|e| {
            tracing::debug!(app_id = app.id, reason = %e, "token refused");
            invalid()
        })?;
        let app_id = claims.app().ok_or_else(invalid)?;
        if cap > 0 {
            let mut cache = self.cache.borrow_mut();
            if cache.len() >= cap {
                cache.clear();
            }
            cache.insert(
                token.into(),
                CachedToken {
                    app_id,
                    exp: claims.exp,
                    generation,
                },
            );
        }
        Ok(app_id)
    }
}

/// What authentication found out about the caller.
#[derive(Debug, Clone)]
pub struct AppInfo {
    pub app_id: u64,
    pub default_strategy: Option<String>,
}

/// The token of `Bearer <token>` (scheme case-insensitive, per RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Stage for AuthStage {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn check<'s>(&'s self, admission: &'s mut Admission, meta: &'s RequestMeta<'_>) -> Verdict<'s> {
        if !self.service.config.enabled {
            return Verdict::Pass;
        }
        match self.check_request(meta, admission.esme) {
            Ok(info) => {
                admission.app_id = info.app_id;
                if admission.strategy.is_none() {
                    admission.strategy = info.default_strategy;
                }
                Verdict::Pass
            }
            Err(e) => Verdict::Reject(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn hash_is_argon2id_and_verifies() {
        let h = hash_secret("pw");
        assert!(h.starts_with("$argon2id$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"pW", &parsed).is_err());
    }

    #[test]
    fn server_key_from_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SecurityConfig::defaults_for(&dir.path().join("smsgw.toml"));
        let none = |_: &str| None;
        assert_eq!(
            load_server_key(&cfg, &none).unwrap_err(),
            KeyError::Missing {
                env: JWT_SECRET_ENV
            }
        );
        let short = |_: &str| Some("short".to_string());
        assert_eq!(
            load_server_key(&cfg, &short).unwrap_err(),
            KeyError::TooShort(5)
        );
        let file = dir.path().join("k");
        std::fs::write(&file, format!("{}\n", "k".repeat(40))).unwrap();
        cfg.jwt_key_file = Some(file);
        assert!(load_server_key(&cfg, &none).is_ok());
        // Debug of the key shows nothing of it.
        let key = load_server_key(&cfg, &none).unwrap();
        assert_eq!(format!("{key:?}"), "ServerKey(***)");
    }
}
