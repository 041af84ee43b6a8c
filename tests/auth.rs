//! Authentication and authorization against the real binary on loopback: every failure case
//! with its exact message and code, HS256/RS256/ES256 with `kid` rotation, CIDR checks (IPv4 and
//! IPv6), link whitelists, the admin key, login, `smsgw token`, and hot reload of the apps file.
//!
//! No SMSC runs: a request that passes authentication reaches routing and gets 503 `no_route`,
//! which is how these tests tell "authorised" from "refused".

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use common::{Proc, spawn};

const SERVER_KEY: &str = "0123456789abcdef0123456789abcdef-test-key";
const ADMIN_KEY: &str = "admin-key-for-tests";
const SECRET_ONE: &str = "s3cret-one";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

fn hash(secret: &str) -> String {
    smsgw::auth::hash_secret(secret)
}

/// Apps used by most cases. 1: loopback, esmes 100/200/300, three public keys. 2: disabled.
/// 3: only 10.0.0.0/8 (loopback refused). 4: any address, any esme.
fn apps_file() -> String {
    format!(
        r#"
[apps.1]
name = "one"
secret_hash = "{h1}"
allowed_cidrs = ["127.0.0.0/8", "::1/128"]
allowed_esmes = [100, 200, 300]
[[apps.1.keys]]
kid = "r1"
alg = "RS256"
pem_file = "{r1}"
[[apps.1.keys]]
kid = "r2"
alg = "RS256"
pem_file = "{r2}"
[[apps.1.keys]]
kid = "e1"
alg = "ES256"
pem_file = "{e1}"

[apps.2]
name = "disabled"
enabled = false
secret_hash = "{h1}"
allowed_cidrs = ["0.0.0.0/0", "::/0"]

[apps.3]
name = "ten-net"
secret_hash = "{h1}"
allowed_cidrs = ["10.0.0.0/8"]

[apps.4]
name = "anywhere"
secret_hash = "{h1}"
allowed_cidrs = ["0.0.0.0/0", "::/0"]
"#,
        h1 = hash(SECRET_ONE),
        r1 = data("r1.pub.pem").display(),
        r2 = data("r2.pub.pem").display(),
        e1 = data("e1.pub.pem").display(),
    )
}

/// Links 100 (no whitelist), 200 (whitelist 10.0.0.0/8), 400 (not allowed for app 1); pool 300
/// of 100 and 200. Nothing listens on port 9: links stay down.
const RULES: &str = r#"
[links.100]
host = "127.0.0.1"
port = 9
system_id = "a"
password = "pw"
esme_rate = 100
reconnect_min_ms = 1000
reconnect_max_ms = 5000

[links.200]
host = "127.0.0.1"
port = 9
system_id = "b"
password = "pw"
esme_rate = 100
whitelist = ["10.0.0.0/8"]
reconnect_min_ms = 1000
reconnect_max_ms = 5000

[links.400]
host = "127.0.0.1"
port = 9
system_id = "c"
password = "pw"
esme_rate = 100
reconnect_min_ms = 1000
reconnect_max_ms = 5000

[pools.300]
members = [{ link = 100, weight = 1 }, { link = 200, weight = 1 }]
"#;

struct Gw {
    proc: Proc,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

fn start(listen: &str, apps: &str, admin: bool, poll_ms: u32) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let smsgw = format!(
        "[server]\nhttp_addr = \"{listen}\"\ngrpc_addr = \"127.0.0.1:0\"\nshards = 1\n\
         shutdown_timeout_ms = 2000\ninstance_id = \"auth\"\n\n\
         [state]\npath = \"{state}\"\nfsync = \"off\"\nbatch_delay_us = 0\n\n\
         [callbacks]\npath = \"{callbacks}\"\n\n\
         [security]\napps_file = \"apps.toml\"\napps_poll_interval_ms = {poll_ms}\n\
         leeway_s = 5\nlogin_failures_per_min = 3\n",
        state = dir.path().join("state").display(),
        callbacks = dir.path().join("callbacks").display(),
    );
    std::fs::write(dir.path().join("smsgw.toml"), smsgw).unwrap();
    std::fs::write(dir.path().join("smpp_rules.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("apps.toml"), apps).unwrap();
    let args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        dir.path().join("smsgw.toml").display().to_string(),
        "--rules".into(),
        dir.path().join("smpp_rules.toml").display().to_string(),
    ];
    let mut env = vec![("SMSGW_JWT_SECRET", SERVER_KEY)];
    if admin {
        env.push(("ADMIN_API_KEY", ADMIN_KEY));
    }
    let (proc, line) = spawn(
        "gw",
        &args,
        &env,
        "smsgw listening",
        Duration::from_secs(30),
    );
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_string();
    Gw {
        proc,
        url: format!("http://{addr}"),
        dir,
    }
}

impl Gw {
    fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, Value) {
        let (st, text) = smsgw::api::client::request(
            &self.url,
            method,
            path,
            headers,
            body.as_bytes(),
            Duration::from_secs(20),
        )
        .unwrap();
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A send to `esme` with the given credentials.
    fn send(&self, esme: u32, token: Option<&str>, app: Option<&str>) -> (u16, Value) {
        let mut h = Vec::new();
        if let Some(t) = token {
            h.push(("authorization", format!("Bearer {t}")));
        }
        if let Some(a) = app {
            h.push(("x-app-id", a.to_string()));
        }
        let body = json!({"esme": esme, "source": "Test", "destination": "+4915100000001", "message": "hi"});
        self.req("POST", "/api/v1/sms/send", &h, &body.to_string())
    }
}

fn now() -> u64 {
    smsgw::auth::token::unix_now()
}

fn claims(app: u64, exp: u64, nbf: u64) -> Value {
    json!({"sub": app.to_string(), "app_id": app, "exp": exp, "nbf": nbf, "iat": nbf, "iss": "smsgw"})
}

fn hs256(key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: &str, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(data(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64_url::encode;
    encode(bytes)
}

/// Minimal base64url without padding (the test avoids another dependency).
mod base64_url {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[track_caller]
fn expect(r: (u16, Value), status: u16, code: &str, message: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["code"], code, "{}", r.1);
    assert_eq!(r.1["error"], message, "{}", r.1);
}

/// Authorised: the request got past every auth check and failed at routing (no SMSC).
#[track_caller]
fn passes(r: (u16, Value)) {
    assert_eq!(r.0, 503, "{}", r.1);
    assert_eq!(r.1["code"], "no_route", "{}", r.1);
}

#[test]
fn every_failure_case_and_every_key_kind() {
    let gw = start("127.0.0.1:0", &apps_file(), true, 0);
    let t = now();
    let good = hs256(SERVER_KEY, &claims(1, t + 600, t));

    passes(gw.send(100, Some(&good), Some("1")));

    // Reference messages, in the order the checks run.
    expect(
        gw.send(100, None, Some("1")),
        401,
        "missing_authorization",
        "authorization header required",
    );
    let (st, v) = gw.req(
        "POST",
        "/api/v1/sms/send",
        &[
            ("authorization", "Basic abc".into()),
            ("x-app-id", "1".into()),
        ],
        "{}",
    );
    expect(
        (st, v),
        401,
        "missing_authorization",
        "authorization header required",
    );
    expect(
        gw.send(100, Some(&good), None),
        401,
        "missing_app_id",
        "X-App-ID header required",
    );
    expect(
        gw.send(100, Some(&good), Some("abc")),
        400,
        "invalid_app_id",
        "invalid X-App-ID",
    );
    expect(
        gw.send(100, Some(&good), Some("0")),
        400,
        "invalid_app_id",
        "invalid X-App-ID",
    );
    expect(
        gw.send(100, Some(&good), Some("99")),
        401,
        "unknown_app_id",
        "unknown app_id",
    );

    let invalid = |tok: &str| {
        expect(
            gw.send(100, Some(tok), Some("1")),
            401,
            "invalid_token",
            "invalid or expired token",
        )
    };
    // alg none, hand-made.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(1, t + 600, t).to_string().as_bytes())
    );
    invalid(&none);
    // Wrong HMAC key.
    invalid(&hs256(
        "another-key-another-key-another-key!!",
        &claims(1, t + 600, t),
    ));
    // Expired beyond the 5 s leeway; nbf in the future beyond it.
    invalid(&hs256(SERVER_KEY, &claims(1, t - 60, t - 120)));
    invalid(&hs256(SERVER_KEY, &claims(1, t + 600, t + 60)));
    // Within the leeway both are fine.
    passes(gw.send(
        100,
        Some(&hs256(SERVER_KEY, &claims(1, t - 2, t - 100))),
        Some("1"),
    ));
    passes(gw.send(
        100,
        Some(&hs256(SERVER_KEY, &claims(1, t + 600, t + 2))),
        Some("1"),
    ));
    // Tampered payload: app 1's signature over a payload that now says app 4.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(4, t + 600, t).to_string().as_bytes()),
        parts[2]
    );
    expect(
        gw.send(100, Some(&tampered), Some("4")),
        401,
        "invalid_token",
        "invalid or expired token",
    );
    // Garbage.
    invalid("not.a.token");
    // Token for app 4 presented with X-App-ID 1.
    let four = hs256(SERVER_KEY, &claims(4, t + 600, t));
    expect(
        gw.send(100, Some(&four), Some("1")),
        401,
        "app_id_mismatch",
        "X-App-ID does not match the token",
    );

    // RS256 / ES256 by kid; both RSA keys valid at once (rotation).
    let c1 = claims(1, t + 600, t);
    passes(gw.send(
        100,
        Some(&signed(Algorithm::RS256, "r1", "r1.key.pem", &c1)),
        Some("1"),
    ));
    passes(gw.send(
        100,
        Some(&signed(Algorithm::RS256, "r2", "r2.key.pem", &c1)),
        Some("1"),
    ));
    passes(gw.send(
        100,
        Some(&signed(Algorithm::ES256, "e1", "e1.key.pem", &c1)),
        Some("1"),
    ));
    // Signed by r2's private key but labelled r1: signature does not verify.
    invalid(&signed(Algorithm::RS256, "r1", "r2.key.pem", &c1));
    // Unknown kid; a kid whose key is ES256 on an RS256 token (wrong alg).
    invalid(&signed(Algorithm::RS256, "r9", "r1.key.pem", &c1));
    invalid(&signed(Algorithm::RS256, "e1", "r1.key.pem", &c1));
    // An HS256 token using app 1's RSA public key as the HMAC secret (key confusion).
    let public = std::fs::read_to_string(data("r1.pub.pem")).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("r1".into());
    let confused =
        jsonwebtoken::encode(&h, &c1, &EncodingKey::from_secret(public.as_bytes())).unwrap();
    invalid(&confused);
    // An RS256 token with no kid is refused (there is no server RSA key).
    let mut h = Header::new(Algorithm::RS256);
    h.kid = None;
    let pem = std::fs::read(data("r1.key.pem")).unwrap();
    invalid(&jsonwebtoken::encode(&h, &c1, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap());

    // Disabled app (valid token) → 403.
    let two = hs256(SERVER_KEY, &claims(2, t + 600, t));
    expect(
        gw.send(100, Some(&two), Some("2")),
        403,
        "app_disabled",
        "app is disabled",
    );
    // App CIDRs exclude loopback.
    let three = hs256(SERVER_KEY, &claims(3, t + 600, t));
    expect(
        gw.send(100, Some(&three), Some("3")),
        403,
        "ip_not_allowed",
        "client IP is not allowed for this app",
    );
    // esme not allowed for app 1; link 200's whitelist excludes loopback; pool 300 has 200.
    expect(
        gw.send(400, Some(&good), Some("1")),
        403,
        "esme_not_allowed",
        "this app may not send through this esme",
    );
    expect(
        gw.send(200, Some(&good), Some("1")),
        403,
        "ip_not_allowed",
        "client IP is not in the link's whitelist",
    );
    expect(
        gw.send(300, Some(&good), Some("1")),
        403,
        "ip_not_allowed",
        "client IP is not in the link's whitelist",
    );
    // App 4 may use any esme: link 400 passes.
    passes(gw.send(400, Some(&four), Some("4")));

    // Other protected routes: status and link listing need a token too.
    let h1 = [
        ("authorization", format!("Bearer {good}")),
        ("x-app-id", "1".to_string()),
    ];
    expect(
        gw.req("GET", "/api/v1/smpp/links", &[], ""),
        401,
        "missing_authorization",
        "authorization header required",
    );
    assert_eq!(gw.req("GET", "/api/v1/smpp/links", &h1, "").0, 200);
    expect(
        gw.req("GET", "/api/v1/sms/some-id", &[], ""),
        401,
        "missing_authorization",
        "authorization header required",
    );
    assert_eq!(
        gw.req("GET", "/api/v1/sms/some-id", &h1, "").1["code"],
        "unknown_transaction"
    );
    // Unauthenticated callers learn nothing from a bad body: 401 before 422.
    expect(
        gw.req("POST", "/api/v1/sms/send", &[], "{\"esme\": 5}"),
        401,
        "missing_authorization",
        "authorization header required",
    );
    // Open routes stay open.
    assert_eq!(gw.req("GET", "/healthy", &[], "").0, 200);
}

#[test]
fn login_token_command_and_failed_login_limit() {
    let gw = start("127.0.0.1:0", &apps_file(), false, 0);
    let login = |body: Value| gw.req("POST", "/api/v1/user/login", &[], &body.to_string());

    let (st, v) = login(json!({"app_id": 1, "secret": SECRET_ONE}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 43200);
    let token = v["token"].as_str().unwrap().to_string();
    passes(gw.send(100, Some(&token), Some("1")));
    // String app ids work too (the reference's clients send both).
    assert_eq!(login(json!({"app_id": "4", "secret": SECRET_ONE})).0, 200);
    // Disabled app with the right secret; app whose CIDRs exclude the caller.
    expect(
        login(json!({"app_id": 2, "secret": SECRET_ONE})),
        403,
        "app_disabled",
        "app is disabled",
    );
    expect(
        login(json!({"app_id": 3, "secret": SECRET_ONE})),
        403,
        "ip_not_allowed",
        "client IP is not allowed for this app",
    );
    assert_eq!(login(json!({"app_id": 1})).1["code"], "missing_field");

    // `smsgw token` mints with the same server key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .args(["token", "--app-id", "4", "--config"])
        .arg(gw.dir.path().join("smsgw.toml"))
        .arg("--rules")
        .arg(gw.dir.path().join("smpp_rules.toml"))
        .env("SMSGW_JWT_SECRET", SERVER_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap();
    passes(gw.send(400, Some(minted.trim()), Some("4")));
    // ... and refuses an unknown app.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .args(["token", "--app-id", "77", "--config"])
        .arg(gw.dir.path().join("smsgw.toml"))
        .arg("--rules")
        .arg(gw.dir.path().join("smpp_rules.toml"))
        .env("SMSGW_JWT_SECRET", SERVER_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Wrong secrets and unknown apps: 401, then 429 after 3 failures from this address.
    for body in [
        json!({"app_id": 1, "secret": "wrong"}),
        json!({"app_id": 55, "secret": SECRET_ONE}),
        json!({"app_id": 1, "secret": ""}),
    ] {
        expect(
            login(body),
            401,
            "invalid_credentials",
            "invalid app_id or secret",
        );
    }
    let (st, v) = login(json!({"app_id": 1, "secret": SECRET_ONE}));
    assert_eq!((st, &v["code"]), (429, &json!("rate_limited")), "{v}");

    // Admin API disabled without ADMIN_API_KEY.
    expect(
        gw.req(
            "GET",
            "/api/v1/admin/apps",
            &[("x-admin-key", "x".into())],
            "",
        ),
        503,
        "admin_disabled",
        "admin API disabled: ADMIN_API_KEY is not set",
    );
}

#[test]
fn ipv6_client_and_cidrs() {
    // Same apps; the gateway listens on ::1 so the client address is ::1.
    let gw = start("[::1]:0", &apps_file(), false, 0);
    let t = now();
    let one = hs256(SERVER_KEY, &claims(1, t + 600, t));
    passes(gw.send(100, Some(&one), Some("1")));
    let three = hs256(SERVER_KEY, &claims(3, t + 600, t));
    expect(
        gw.send(100, Some(&three), Some("3")),
        403,
        "ip_not_allowed",
        "client IP is not allowed for this app",
    );
    // An app allowing only 127.0.0.0/8 refuses ::1 (no implicit v4/v6 equivalence).
    let apps = apps_file().replace(
        "allowed_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
        "allowed_cidrs = [\"127.0.0.0/8\", \"2001:db8::/32\"]",
    );
    let gw2 = start("[::1]:0", &apps, false, 0);
    expect(
        gw2.send(100, Some(&one), Some("1")),
        403,
        "ip_not_allowed",
        "client IP is not allowed for this app",
    );
}

#[test]
fn admin_key_and_hot_reload() {
    let gw = start("127.0.0.1:0", &apps_file(), true, 200);
    let t = now();
    let admin = |key: Option<&str>, method: &str, path: &str| {
        let h: Vec<(&str, String)> = key
            .map(|k| ("x-admin-key", k.to_string()))
            .into_iter()
            .collect();
        gw.req(method, path, &h, "")
    };
    expect(
        admin(None, "GET", "/api/v1/admin/apps"),
        401,
        "invalid_admin_key",
        "invalid admin key",
    );
    expect(
        admin(Some("wrong"), "GET", "/api/v1/admin/apps"),
        401,
        "invalid_admin_key",
        "invalid admin key",
    );
    let (st, v) = admin(Some(ADMIN_KEY), "GET", "/api/v1/admin/apps");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 4);
    assert_eq!(v[0]["key_ids"], json!(["r1", "r2", "e1"]));
    let text = v.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("BEGIN"),
        "secrets leaked: {text}"
    );

    // App 5 appears by mtime poll; app 1 disappears.
    let five = hs256(SERVER_KEY, &claims(5, t + 600, t));
    let one = hs256(SERVER_KEY, &claims(1, t + 600, t));
    expect(
        gw.send(100, Some(&five), Some("5")),
        401,
        "unknown_app_id",
        "unknown app_id",
    );
    passes(gw.send(100, Some(&one), Some("1")));
    let apps_path = gw.dir.path().join("apps.toml");
    let new_apps = format!(
        "[apps.5]\nname = \"five\"\nsecret_hash = \"{}\"\nallowed_cidrs = [\"127.0.0.1\"]\n",
        hash("five")
    );
    // Make sure the mtime moves even on coarse-timestamp file systems.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&apps_path, &new_apps).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || gw
            .send(100, Some(&five), Some("5"))
            .0
            == 503),
        "app 5 not picked up by the poll"
    );
    passes(gw.send(100, Some(&five), Some("5")));
    // The cached verification of app 1's token does not survive the reload.
    expect(
        gw.send(100, Some(&one), Some("1")),
        401,
        "unknown_app_id",
        "unknown app_id",
    );

    // A broken file is refused; the previous apps stay. Admin reload reports the problems.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &apps_path,
        "[apps.6]\nname = \"six\"\nallowed_cidrs = [\"10.1.2.3/8\"]\n",
    )
    .unwrap();
    let (st, v) = admin(Some(ADMIN_KEY), "POST", "/api/v1/admin/reload");
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["code"], "invalid_apps_file");
    passes(gw.send(100, Some(&five), Some("5")));

    // Admin reload with a good file takes effect at once.
    std::fs::write(&apps_path, apps_file()).unwrap();
    let (st, v) = admin(Some(ADMIN_KEY), "POST", "/api/v1/admin/reload");
    assert_eq!((st, &v["apps"]), (200, &json!(4)), "{v}");
    passes(gw.send(100, Some(&one), Some("1")));
    expect(
        gw.send(100, Some(&five), Some("5")),
        401,
        "unknown_app_id",
        "unknown app_id",
    );
    expect(
        admin(Some(ADMIN_KEY), "GET", "/api/v1/admin/reload"),
        405,
        "method_not_allowed",
        "method not allowed on this path",
    );
    expect(
        admin(Some(ADMIN_KEY), "GET", "/api/v1/admin/nope"),
        404,
        "not_found",
        "no such route",
    );
}
