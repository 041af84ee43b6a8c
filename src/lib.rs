//! smsgw: an SMS gateway from REST/gRPC to SMPP v3.4 SMSCs.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and invariants.

pub mod api;
pub mod auth;
pub mod callback;
pub mod cdr;
pub mod config;
pub mod limit;
pub mod loadgen;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod sim;
pub mod smpp;
pub mod state;
