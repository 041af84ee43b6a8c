//! JWTs: minting HS256 tokens with the server key, verifying HS256 / RS256 / ES256.
//!
//! The algorithm is never taken from the token alone: HS256 is checked only against the server
//! key, and a token with a `kid` is checked only with that app's key and that key's configured
//! algorithm. So `alg: none` (not even parseable here), an RS256 public key used as an HMAC
//! secret, or a token of app A signed with app B's key all fail.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::apps::App;

/// Shortest accepted server key: HS256 with less than 256 bits is guessable offline.
pub const MIN_SERVER_KEY_BYTES: usize = 32;
/// Longest bearer token looked at (a JWT with an RSA-4096 signature is ~1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The HS256 key of this gateway (shared by every replica). `Debug` shows nothing.
pub struct ServerKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no JWT server key: set {env} or security.jwt_secret_file")]
    Missing { env: &'static str },
    #[error("cannot read the JWT server key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the JWT server key is {0} bytes; at least {MIN_SERVER_KEY_BYTES} are required")]
    TooShort(usize),
}

impl ServerKey {
    pub fn new(secret: &[u8]) -> Result<ServerKey, KeyError> {
        if secret.len() < MIN_SERVER_KEY_BYTES {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(ServerKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }
}

/// What a token says. `sub` is the app id as a string (RFC 7519 wants a string); `app_id`
/// is the same number for clients of the reference product, which read that claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<u64>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Claims {
    /// The app the token is for; `None` when `sub` and `app_id` are both absent or disagree.
    pub fn app(&self) -> Option<u64> {
        let sub = self.sub.as_deref().and_then(|s| s.parse::<u64>().ok());
        match (sub, self.app_id) {
            (Some(a), Some(b)) if a != b => None,
            (Some(a), _) | (None, Some(a)) => Some(a),
            (None, None) => None,
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 token for `app_id`, valid from `now` for `ttl`.
pub fn mint(key: &ServerKey, issuer: &str, app_id: u64, ttl: Duration, now: u64) -> String {
    let claims = Claims {
        sub: Some(app_id.to_string()),
        app_id: Some(app_id),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
        iss: Some(issuer.to_string()),
    };
    // Encoding a struct of numbers and strings with an HMAC key cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding)
        .expect("HS256 encoding of plain claims")
}

/// Why a token was refused (for logs and tests; the client sees one message for all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token or header")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no key with this kid for the app")]
    UnknownKid,
    #[error("the key's algorithm is {expected:?}, the token says {got:?}")]
    WrongAlgorithm { expected: String, got: String },
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("the token names no app (sub / app_id)")]
    NoApp,
}

/// Verifies signature, `exp`, `nbf` (with `leeway`) and, for server tokens, `iss`.
/// `app` is the app named by `X-App-ID`: its keys are the only public keys tried.
pub fn verify(
    token: &str,
    server: &ServerKey,
    issuer: &str,
    app: &App,
    leeway: Duration,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let (key, alg) = match (header.alg, header.kid.as_deref()) {
        (Algorithm::HS256, None) => (&server.decoding, Algorithm::HS256),
        (alg, Some(kid)) => {
            let k = app.key(kid).ok_or(TokenError::UnknownKid)?;
            if k.alg != alg {
                return Err(TokenError::WrongAlgorithm {
                    expected: format!("{:?}", k.alg),
                    got: format!("{alg:?}"),
                });
            }
            (&k.key, k.alg)
        }
        (alg, None) => return Err(TokenError::Algorithm(format!("{alg:?}"))),
    };
    let mut v = Validation::new(alg);
    v.leeway = leeway.as_secs();
    v.validate_nbf = true;
    v.validate_exp = true;
    v.set_required_spec_claims(&["exp"]);
    if alg == Algorithm::HS256 {
        v.set_issuer(&[issuer]);
    }
    let data = jsonwebtoken::decode::<Claims>(token, key, &v)
        .map_err(|e| TokenError::Rejected(format!("{:?}", e.kind())))?;
    if data.claims.app().is_none() {
        return Err(TokenError::NoApp);
    }
    Ok(data.claims)
}
