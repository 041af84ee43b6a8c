//! The apps file (`config/apps.toml` by default): who may call the gateway.
//!
//! Kept apart from `smsgw.toml` because it changes often (new tenants, key rotation) and is
//! reloaded without a restart: the control plane parses a new file into a fresh immutable
//! [`Apps`] snapshot and swaps it in whole; a file with any error is refused and the old
//! snapshot stays.
//!
//! ```toml
//! [apps.1]
//! name = "billing"
//! enabled = true                                   # default true
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$..." # `smsgw hash-secret`; no secret = no login
//! allowed_cidrs = ["10.0.0.0/8", "2001:db8::/32"]  # required; ["0.0.0.0/0", "::/0"] = any
//! allowed_esmes = [100, 900]                       # links/pools; [] = all (default)
//! default_strategy = "cp1"                         # contact policy when the request names none
//! callback_url = "https://billing.example/smsgw"   # delivery callbacks when a send names none
//! callback_secret_env = "BILLING_CALLBACK_SECRET"  # HMAC key of callbacks (or callback_secret)
//! [[apps.1.keys]]                                  # tokens the app signs itself
//! kid = "2026-01"
//! alg = "RS256"                                    # or "ES256"
//! pem_file = "keys/billing-2026-01.pem"            # or pem = "-----BEGIN PUBLIC KEY-----..."
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use argon2::PasswordHash;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::config::Cidr;

/// Most apps one file may define (bounds the snapshot and the `GET /admin/apps` answer).
pub const MAX_APPS: usize = 100_000;
/// Most public keys per app (rotation needs two or three, not more).
pub const MAX_KEYS_PER_APP: usize = 16;
/// Longest per-app default `callback_url` (the request bound is `[callbacks] max_url_bytes`,
/// not known to the apps file; this is its largest allowed value).
pub const MAX_CALLBACK_URL_LEN: usize = 65_536;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsToml {
    #[serde(default)]
    apps: std::collections::BTreeMap<String, AppToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppToml {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    secret_hash: Option<String>,
    allowed_cidrs: Vec<String>,
    #[serde(default)]
    allowed_esmes: Vec<u32>,
    #[serde(default)]
    default_strategy: Option<String>,
    #[serde(default)]
    keys: Vec<KeyToml>,
    /// Default delivery-callback URL (a send's own `callback_url` wins).
    #[serde(default)]
    callback_url: Option<String>,
    /// Key of the callback signatures (`X-Smsgw-Signature`). The login secret is stored only
    /// as an argon2id hash, so it cannot key an HMAC: this is a separate shared secret.
    #[serde(default)]
    callback_secret: Option<String>,
    /// The same, read from this environment variable at load (Docker/Kubernetes secrets).
    #[serde(default)]
    callback_secret_env: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyToml {
    kid: String,
    alg: String,
    #[serde(default)]
    pem: Option<String>,
    #[serde(default)]
    pem_file: Option<String>,
}

/// A public key an app signs its own tokens with.
pub struct AppKey {
    pub kid: String,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppKey({}, {:?})", self.kid, self.alg)
    }
}

/// One tenant. `Debug` never shows the secret hash.
pub struct App {
    pub id: u64,
    pub name: String,
    pub enabled: bool,
    /// argon2id PHC string; `None`: the app cannot log in (it signs its own tokens).
    secret_hash: Option<String>,
    pub keys: Vec<AppKey>,
    pub allowed_cidrs: Vec<Cidr>,
    /// Links and pools the app may send through; empty = all.
    pub allowed_esmes: Vec<u32>,
    pub default_strategy: Option<String>,
    /// Default delivery-callback URL (validated like a request's `callback_url`).
    pub callback_url: Option<String>,
    /// HMAC key of callback signatures; `None`: callbacks are sent unsigned.
    callback_secret: Option<String>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("has_secret", &self.secret_hash.is_some())
            .field("keys", &self.keys)
            .field("allowed_cidrs", &self.allowed_cidrs)
            .field("allowed_esmes", &self.allowed_esmes)
            .field("callback_url", &self.callback_url)
            .field("has_callback_secret", &self.callback_secret.is_some())
            .finish()
    }
}

impl App {
    pub fn secret_hash(&self) -> Option<&str> {
        self.secret_hash.as_deref()
    }

    /// The key callbacks of this app are signed with.
    pub fn callback_secret(&self) -> Option<&str> {
        self.callback_secret.as_deref()
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allowed_cidrs.iter().any(|c| c.contains(ip))
    }

    pub fn allows_esme(&self, esme: u32) -> bool {
        self.allowed_esmes.is_empty() || self.allowed_esmes.contains(&esme)
    }

    pub fn key(&self, kid: &str) -> Option<&AppKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// An immutable snapshot of the apps file.
#[derive(Debug, Default)]
pub struct Apps {
    by_id: HashMap<u64, App>,
}

impl Apps {
    pub fn get(&self, id: u64) -> Option<&App> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Apps sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &App> {
        let mut v: Vec<&App> = self.by_id.values().collect();
        v.sort_by_key(|a| a.id);
        v.into_iter()
    }

    /// Reads and validates the apps file. Every problem is reported (`key: reason`).
    pub fn load(path: &Path) -> Result<Apps, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Apps::parse(&text, path)
    }

    /// Parses the text of an apps file; relative `pem_file`s are relative to `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Apps, Vec<String>> {
        let file: AppsToml = toml::from_str(text)
            .map_err(|e| vec![format!("{}: {}", path.display(), e.message())])?;
        let mut errors = Vec::new();
        if file.apps.len() > MAX_APPS {
            errors.push(format!("apps: more than {MAX_APPS} apps"));
        }
        let mut by_id = HashMap::with_capacity(file.apps.len());
        for (id_text, a) in file.apps {
            let key = format!("apps.{id_text}");
            let id = match id_text.parse::<u64>() {
                Ok(id) if id > 0 && id <= i64::MAX as u64 => id,
                _ => {
                    errors.push(format!("{key}: the app id must be a positive integer"));
                    continue;
                }
            };
            if by_id.contains_key(&id) {
                errors.push(format!("{key}: app id {id} is defined twice"));
                continue;
            }
            if let Some(app) = parse_app(id, &key, a, path, &mut errors) {
                by_id.insert(id, app);
            }
        }
        if errors.is_empty() {
            Ok(Apps { by_id })
        } else {
            Err(errors)
        }
    }
}

fn parse_app(id: u64, key: &str, a: AppToml, path: &Path, errors: &mut Vec<String>) -> Option<App> {
    let before = errors.len();
    if a.name.trim().is_empty() || a.name.len() > 128 {
        errors.push(format!("{key}.name: must be 1..=128 bytes"));
    }
    if let Some(h) = &a.secret_hash {
        match PasswordHash::new(h) {
            Ok(p) if p.algorithm.as_str() == "argon2id" => {}
            Ok(p) => errors.push(format!(
                "{key}.secret_hash: algorithm {} is not argon2id",
                p.algorithm
            )),
            // The hash text is not echoed: it is a secret of sorts, too.
            Err(e) => errors.push(format!(
                "{key}.secret_hash: not a PHC string ({e}); make one with `smsgw hash-secret`"
            )),
        }
    }
    let mut cidrs = Vec::with_capacity(a.allowed_cidrs.len());
    for (i, c) in a.allowed_cidrs.iter().enumerate() {
        match c.parse::<Cidr>() {
            Ok(c) => cidrs.push(c),
            Err(e) => errors.push(format!("{key}.allowed_cidrs.{i}: {e}")),
        }
    }
    if a.allowed_cidrs.is_empty() {
        errors.push(format!(
            "{key}.allowed_cidrs: must list at least one network (use [\"0.0.0.0/0\", \"::/0\"] to allow any)"
        ));
    }
    if a.allowed_esmes.contains(&0) {
        errors.push(format!("{key}.allowed_esmes: ids are positive"));
    }
    if a.keys.len() > MAX_KEYS_PER_APP {
        errors.push(format!("{key}.keys: more than {MAX_KEYS_PER_APP} keys"));
    }
    if a.secret_hash.is_none() && a.keys.is_empty() {
        errors.push(format!(
            "{key}: needs a `secret_hash` (login) or `keys` (self-signed tokens)"
        ));
    }
    let mut keys: Vec<AppKey> = Vec::new();
    for (i, k) in a.keys.into_iter().enumerate() {
        let kkey = format!("{key}.keys.{i}");
        if k.kid.is_empty() || keys.iter().any(|o| o.kid == k.kid) {
            errors.push(format!(
                "{kkey}.kid: must be non-empty and unique within the app"
            ));
            continue;
        }
        let pem = match (k.pem, k.pem_file) {
            (Some(p), None) => p,
            (None, Some(f)) => {
                let file = super::config::resolve_relative(path, Path::new(&f));
                match std::fs::read_to_string(&file) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!(
                            "{kkey}.pem_file: cannot read {}: {e}",
                            file.display()
                        ));
                        continue;
                    }
                }
            }
            _ => {
                errors.push(format!("{kkey}: set exactly one of `pem` and `pem_file`"));
                continue;
            }
        };
        let parsed = match k.alg.as_str() {
            "RS256" => DecodingKey::from_rsa_pem(pem.as_bytes()).map(|d| (Algorithm::RS256, d)),
            "ES256" => DecodingKey::from_ec_pem(pem.as_bytes()).map(|d| (Algorithm::ES256, d)),
            other => {
                errors.push(format!(
                    "{kkey}.alg: `{other}` is not supported (RS256 or ES256)"
                ));
                continue;
            }
        };
        match parsed {
            Ok((alg, key)) => keys.push(AppKey {
                kid: k.kid,
                alg,
                key,
            }),
            Err(e) => errors.push(format!("{kkey}: not a {} public key PEM: {e}", k.alg)),
        }
    }
    if let Some(u) = &a.callback_url
        && let Err(e) = crate::callback::validate_url(u, MAX_CALLBACK_URL_LEN)
    {
        errors.push(format!("{key}.callback_url: {e}"));
    }
    let callback_secret = match (a.callback_secret, a.callback_secret_env) {
        (Some(s), None) => Some(s),
        (None, Some(var)) => match std::env::var(&var) {
            Ok(s) => Some(s),
            Err(_) => {
                errors.push(format!(
                    "{key}.callback_secret_env: environment variable {var} is not set"
                ));
                None
            }
        },
        (None, None) => None,
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{key}: set at most one of `callback_secret` and `callback_secret_env`"
            ));
            None
        }
    };
    if callback_secret.as_ref().is_some_and(|s| s.len() < 16) {
        // The secret itself is never echoed.
        errors.push(format!("{key}.callback_secret: must be at least 16 bytes"));
    }
    if errors.len() > before {
        return None;
    }
    Some(App {
        id,
        name: a.name,
        enabled: a.enabled,
        secret_hash: a.secret_hash,
        keys,
        allowed_cidrs: cidrs,
        allowed_esmes: a.allowed_esmes,
        default_strategy: a.default_strategy.filter(|s| !s.is_empty()),
        callback_url: a.callback_url,
        callback_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Apps, Vec<String>> {
        Apps::parse(text, Path::new("/nonexistent/apps.toml"))
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$LJfYVHi9BnnsKj0SN4l4iA$iUds5Uhe4xTr4l9NBy0pwmuqlqNUPRUzJbFXr2UnXVA";

    #[test]
    fn callback_url_and_secret() {
        let app = |extra: &str| {
            parse(&format!(
                "[apps.7]\nname = \"x\"\nsecret_hash = \"{HASH}\"\nallowed_cidrs = [\"::1\"]\n{extra}"
            ))
        };
        let apps = app(
            "callback_url = \"https://h.example/cb\"\ncallback_secret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        let a = apps.get(7).unwrap();
        assert_eq!(a.callback_url.as_deref(), Some("https://h.example/cb"));
        assert_eq!(a.callback_secret(), Some("0123456789abcdef"));
        let debug = format!("{a:?}");
        assert!(debug.contains("has_callback_secret: true") && !debug.contains("0123456789abcdef"));
        let e = app("callback_url = \"ftp://h/\"\n").unwrap_err();
        assert!(e[0].contains("apps.7.callback_url"), "{e:?}");
        let e = app("callback_url = \"https://u:p@h/\"\n").unwrap_err();
        assert!(e[0].contains("credentials"), "{e:?}");
        let e = app("callback_secret = \"short\"\n").unwrap_err();
        assert!(
            e[0].contains("16 bytes") && !e[0].contains("short\""),
            "{e:?}"
        );
        let e = app("callback_secret_env = \"SMSGW_TEST_SURELY_UNSET_VAR\"\n").unwrap_err();
        assert!(e[0].contains("is not set"), "{e:?}");
        let e = app("callback_secret = \"0123456789abcdef\"\ncallback_secret_env = \"X\"\n")
            .unwrap_err();
        assert!(e[0].contains("at most one"), "{e:?}");
        let none = app("").unwrap();
        assert!(none.get(7).unwrap().callback_url.is_none());
        assert!(none.get(7).unwrap().callback_secret().is_none());
    }

    #[test]
    fn a_good_app_and_its_debug_output() {
        let apps = parse(&format!(
            "[apps.7]\nname = \"x\"\nsecret_hash = \"{HASH}\"\nallowed_cidrs = [\"10.0.0.0/8\", \"::1\"]\n"
        ))
        .unwrap();
        let a = apps.get(7).unwrap();
        assert!(a.enabled && a.allows_esme(123));
        assert!(a.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(a.allows_ip("::1".parse().unwrap()));
        assert!(!a.allows_ip("127.0.0.1".parse().unwrap()));
        let debug = format!("{apps:?}");
        assert!(
            !debug.contains("argon2") && debug.contains("has_secret: true"),
            "{debug}"
        );
    }

    #[test]
    fn every_problem_is_reported_without_the_secret() {
        let errs = parse(
            "[apps.0]\nname = \"zero\"\nallowed_cidrs = [\"0.0.0.0/0\"]\n\
             [apps.2]\nname = \"\"\nsecret_hash = \"$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$Yo2Vq4RrYxYzcXRwWSIiYw\"\nallowed_cidrs = []\nallowed_esmes = [0]\n\
             [apps.3]\nname = \"three\"\nsecret_hash = \"plain-text-oops\"\nallowed_cidrs = [\"10.1.2.3/8\"]\n\
             [[apps.3.keys]]\nkid = \"a\"\nalg = \"HS256\"\npem = \"x\"\n\
             [apps.4]\nname = \"four\"\nallowed_cidrs = [\"0.0.0.0/0\"]\n",
        )
        .unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "apps.0: the app id must be a positive integer",
            "apps.2.name",
            "apps.2.secret_hash: algorithm argon2i is not argon2id",
            "apps.2.allowed_cidrs: must list at least one network",
            "apps.2.allowed_esmes",
            "apps.3.secret_hash: not a PHC string",
            "apps.3.allowed_cidrs.0",
            "apps.3.keys.0.alg",
            "apps.4: needs a `secret_hash`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("plain-text-oops"), "{all}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse("[apps.1]\nname = \"a\"\nallowed_cidrs = []\nsecret = \"x\"\n").is_err());
    }
}

#[cfg(test)]
mod shipped {
    use super::*;
    use argon2::{Argon2, PasswordVerifier};

    /// The apps file in `config/` is what the README demo runs with: it must load, and the
    /// documented demo secret must match its hash.
    #[test]
    fn shipped_apps_file_loads_and_the_demo_secret_matches() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/apps.toml");
        let apps = Apps::load(&path).unwrap_or_else(|e| panic!("{}", e.join("\n")));
        let demo = apps.get(1).expect("demo app 1");
        let hash = PasswordHash::new(demo.secret_hash().unwrap()).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"demo-secret-change-me", &hash)
                .is_ok()
        );
    }
}
