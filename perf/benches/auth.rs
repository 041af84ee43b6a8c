//! Authentication micro-benchmarks: one HS256 / RS256 / ES256 verification, and the whole auth
//! stage for a request (headers → app snapshot → token → CIDR/esme checks) with and without the
//! per-shard verified-token cache.
//! Run: `cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use smsgw::auth::token::{self, ServerKey};
use smsgw::auth::{AuthService, AuthStage, SecurityConfig};
use smsgw::config::RulesConfig;
use smsgw::route::Registry;
use smsgw::shard::stages::RequestMeta;

const KEY: &str = "0123456789abcdef0123456789abcdef-bench";

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

fn service(dir: &Path, cache: usize) -> Arc<AuthService> {
    let apps = format!(
        "[apps.1]\nname = \"b\"\nsecret_hash = \"{}\"\nallowed_cidrs = [\"127.0.0.0/8\"]\n\
         [[apps.1.keys]]\nkid = \"r1\"\nalg = \"RS256\"\npem_file = \"{}\"\n\
         [[apps.1.keys]]\nkid = \"e1\"\nalg = \"ES256\"\npem_file = \"{}\"\n",
        smsgw::auth::hash_secret("x"),
        data("r1.pub.pem").display(),
        data("e1.pub.pem").display(),
    );
    std::fs::write(dir.join("apps.toml"), apps).unwrap();
    let mut cfg = SecurityConfig::defaults_for(&dir.join("smsgw.toml"));
    cfg.token_cache_entries = cache;
    cfg.apps_poll_interval = None;
    Arc::new(AuthService::start(cfg, &|_| Some(KEY.to_string())).unwrap())
}

fn signed(alg: Algorithm, kid: &str, file: &str, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(data(file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let now = token::unix_now();
    let key = ServerKey::new(KEY.as_bytes()).unwrap();
    let hs = token::mint(&key, "smsgw", 1, Duration::from_secs(3600), now);
    let claims = serde_json::json!({"sub": "1", "exp": now + 3600});
    let rs = signed(Algorithm::RS256, "r1", "r1.key.pem", &claims);
    let es = signed(Algorithm::ES256, "e1", "e1.key.pem", &claims);

    let svc = service(dir.path(), 4096);
    let apps = svc.apps();
    let app = apps.get(1).unwrap();
    let leeway = Duration::from_secs(30);
    let mut g = c.benchmark_group("jwt_verify");
    for (name, tok) in [("hs256", &hs), ("rs256", &rs), ("es256", &es)] {
        g.bench_function(name, |b| {
            b.iter(|| token::verify(black_box(tok), &key, "smsgw", app, leeway).unwrap())
        });
    }
    g.finish();

    let registry = Arc::new(Registry::new(
        &RulesConfig {
            links: Default::default(),
            pools: Default::default(),
        },
        NonZeroUsize::new(1).unwrap(),
    ));
    let mut g = c.benchmark_group("auth_stage");
    for (name, cache, tok) in [
        ("hs256_cached", 4096, &hs),
        ("hs256_uncached", 0, &hs),
        ("rs256_cached", 4096, &rs),
        ("rs256_uncached", 0, &rs),
    ] {
        let stage = AuthStage::new(service(dir.path(), cache), Arc::clone(&registry));
        let bearer = format!("Bearer {tok}");
        let lookup = |h: &str| match h {
            "authorization" => Some(bearer.as_str()),
            "x-app-id" => Some("1"),
            _ => None,
        };
        let meta = RequestMeta {
            client_ip: [127, 0, 0, 1].into(),
            header: &lookup,
        };
        g.bench_function(name, |b| {
            b.iter(|| stage.check_request(black_box(&meta), 0).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
