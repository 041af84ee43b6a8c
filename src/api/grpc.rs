//! The gRPC face of the gateway (`proto/` is the source; build.rs generates `pb`).
//!
//! Like `rest`, this module only translates: protobuf messages ↔ pipeline inputs and answers,
//! `ApiError` → `tonic::Status` through the one mapping in `api::error`. The calls themselves
//! run on a shard (`crate::shard::grpc` hands them over); tonic runs on the tokio side runtime.

/// Generated messages, servers and clients.
pub mod pb {
    pub mod sms {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic)]
            tonic::include_proto!("sms.v1");
        }
    }
    pub mod auth {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("auth");
    }
}
