//! Generates the gRPC server and client code from `proto/` (the single source of the API).
//! protox parses the .proto files in Rust, so no system `protoc` is needed to build.

const PROTOS: &[&str] = &["proto/sms/v1/sms.proto", "proto/auth/auth.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Only the proto files and this script decide the output: without these lines cargo would
    // rerun the script after any change in the package.
    println!("cargo:rerun-if-changed=build.rs");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
