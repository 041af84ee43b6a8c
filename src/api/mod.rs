//! Ingress: the HTTP/1.1 codec and connection loop (`http`, `server`), the REST handlers
//! (`rest`), and the one error type with its status/code mapping (`error`).
//!
//! Only this module knows HTTP types. Handlers turn requests into calls on the shard pipeline
//! (`crate::shard::pipeline`) and its answers back into JSON.

pub mod error;
pub mod http;
pub mod server;

pub use error::{ApiError, ErrorKind};
pub mod client;
pub mod rest;
// gRPC services (tonic, on the side runtime); translation only, like `rest`.
pub mod grpc;
