//! Authentication and authorization: apps, JWTs, IP allow-lists, the admin key.
//!
//! * `config` — `[security]` of `smsgw.toml`.
//! * `apps` — the hot-reloadable apps file, parsed into immutable snapshots.
//! * `token` — minting and verifying JWTs (HS256 server key; RS256/ES256 app keys by `kid`).
//! * `service` — the shared [`AuthService`] (control plane: reload, login, admin key) and the
//!   per-shard [`AuthStage`] (data plane: one snapshot read and, with the verified-token cache,
//!   no signature check for a token seen before).
//!
//! See `docs/security.md`.

pub mod apps;
pub mod config;
pub mod service;
pub mod token;

pub use apps::{App, Apps};
pub use config::{SecurityConfig, SecurityFile};
pub use service::{AuthService, AuthStage, LoginAnswer, hash_secret, load_server_key};
pub use token::{Claims, ServerKey};
